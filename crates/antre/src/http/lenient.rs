//! Request fields read as leniently as RabbitMQ's management plugin reads
//! them, so the tools written against it work unchanged.
//!
//! RabbitMQ decodes a body into Erlang terms and then coerces each field:
//! a boolean may come as `true` or `"true"` (rabbitmqadmin sends every
//! boolean as a string), a number as `1` or `"1"` (rabbitmqadmin's `get`
//! sends `"count": "1"`), and an empty `arguments` may be `{}` or `[]`
//! (pyrabbit2 sends `[]`, an empty proplist to Erlang). These helpers are
//! `#[serde(deserialize_with = ...)]` functions doing the same coercions,
//! and refusing what RabbitMQ refuses (`"yes"`, `"False"`, `"1x"`).

use serde::de::{Deserializer, Error};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A boolean from `true`/`false` or `"true"`/`"false"` (exactly those, as
/// RabbitMQ's `rabbit_misc:parse_bool`).
pub fn to_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(format!("expected true or false, not {other}")),
    }
}

/// A non-negative integer from a JSON number or a string of digits.
pub fn to_u64(v: &Value) -> Result<u64, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| format!("expected a non-negative integer, not {v}"))
}

/// An arguments table: an object, or `[]`/`null` for none.
pub fn to_arguments(v: Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        Value::Array(a) if a.is_empty() => Ok(Map::new()),
        other => Err(format!("expected an object of arguments, not {other}")),
    }
}

/// `deserialize_with` for an optional boolean field.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => to_bool(&v).map(Some).map_err(D::Error::custom),
    }
}

/// `deserialize_with` for a boolean field that defaults to false.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(opt_bool(d)?.unwrap_or(false))
}

/// `deserialize_with` for an optional count or size.
pub fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => to_u64(&v)
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .map_err(D::Error::custom),
    }
}

/// `deserialize_with` for an `arguments` table.
pub fn arguments<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    to_arguments(Value::deserialize(d)?).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "opt_bool")]
        durable: Option<bool>,
        #[serde(default, deserialize_with = "bool")]
        auto_delete: bool,
        #[serde(default, deserialize_with = "opt_usize")]
        count: Option<usize>,
        #[serde(default, deserialize_with = "arguments")]
        arguments: Map<String, Value>,
    }

    fn parse(v: Value) -> Result<Body, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_stand_for_booleans_and_numbers_as_in_rabbitmq() {
        let b = parse(json!({
            "durable": "false", "auto_delete": "true", "count": "3", "arguments": []
        }))
        .unwrap();
        assert_eq!(b.durable, Some(false));
        assert!(b.auto_delete);
        assert_eq!(b.count, Some(3));
        assert!(b.arguments.is_empty());
        let b = parse(json!({ "durable": true, "count": 2, "arguments": {"x-max-length": 5} }))
            .unwrap();
        assert_eq!(b.durable, Some(true));
        assert_eq!(b.count, Some(2));
        assert_eq!(b.arguments["x-max-length"], 5);
        let b = parse(json!({})).unwrap();
        assert_eq!((b.durable, b.auto_delete, b.count), (None, false, None));
    }

    #[test]
    fn what_rabbitmq_refuses_is_refused() {
        for bad in [
            json!({ "durable": "yes" }),
            json!({ "durable": "False" }),
            json!({ "durable": 1 }),
            json!({ "count": "1x" }),
            json!({ "count": -1 }),
            json!({ "arguments": ["x"] }),
            json!({ "arguments": "x" }),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad} must be refused");
        }
        let err = parse(json!({ "durable": "yes" })).unwrap_err();
        assert!(err.contains("true or false"), "{err}");
    }
}
