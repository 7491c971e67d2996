//! Whether a redeclare's arguments match the existing queue's or
//! exchange's, and RabbitMQ's wording when they do not:
//! `inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '6'
//! but current is '5'`, or, when one side lacks the argument, `received the
//! value '1000' of type 'signedint' but current is none`. Clients and their
//! tests match on these texts.

use antre_amqp::{FieldTable, FieldValue};

use crate::error::BrokerError;
use crate::exchange::headers::values_equal;

/// The queue arguments RabbitMQ compares on redeclare, in its order (the
/// first difference is the one reported).
const QUEUE_ARGS: [&str; 18] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Checks a queue redeclare's arguments: RabbitMQ's list first, then every
/// other `x-` argument (antre's own, such as x-delivery-limit, whose
/// meaning would otherwise change silently). `resource` is
/// `queue 'q' in vhost '/'`.
pub(crate) fn check_queue_args(
    resource: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), BrokerError> {
    let mut extra: Vec<&str> = current
        .iter()
        .chain(received.iter())
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("x-") && !QUEUE_ARGS.contains(k))
        .collect();
    extra.sort_unstable();
    extra.dedup();
    for key in QUEUE_ARGS.iter().copied().chain(extra) {
        check_arg(resource, key, current.get(key), received.get(key))?;
    }
    Ok(())
}

/// Checks an exchange redeclare's arguments: RabbitMQ compares only
/// `alternate-exchange`.
pub(crate) fn check_exchange_args(
    resource: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), BrokerError> {
    let key = "alternate-exchange";
    check_arg(resource, key, current.get(key), received.get(key))
}

fn check_arg(
    resource: &str,
    key: &str,
    current: Option<&FieldValue>,
    received: Option<&FieldValue>,
) -> Result<(), BrokerError> {
    let (got, have) = match (received, current) {
        (None, None) => return Ok(()),
        (Some(r), Some(c)) if values_equal(r, c) => return Ok(()),
        (Some(r), Some(c)) => (quoted(r), quoted(c)),
        (r, c) => (typed(r), typed(c)),
    };
    Err(BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{key}' for {resource}: received {got} but current is {have}"
    )))
}

/// `'value'`, as RabbitMQ prints a bare value.
fn quoted(v: &FieldValue) -> String {
    format!("'{}'", plain(v))
}

/// `the value 'v' of type 't'`, or `none`.
fn typed(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!("the value '{}' of type '{}'", plain(v), type_name(v)),
    }
}

fn plain(v: &FieldValue) -> String {
    match v {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(f) => f.to_string(),
        FieldValue::F64(f) => f.to_string(),
        other => match other.as_i64() {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// The type names RabbitMQ's AMQP codec uses.
pub(crate) fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::LongString(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::ByteArray(_) => "binary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries.iter().cloned().collect()
    }

    const Q: &str = "queue 'q' in vhost '/'";

    #[test]
    fn differing_values_name_both() {
        let err = check_queue_args(
            Q,
            &table(&[("x-max-length", FieldValue::I32(5))]),
            &table(&[("x-max-length", FieldValue::I64(6))]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '6' but current is '5'"
        );
    }

    #[test]
    fn a_missing_side_is_none_and_the_other_is_typed() {
        let ttl = table(&[("x-message-ttl", FieldValue::I32(1000))]);
        let added = check_queue_args(Q, &FieldTable::new(), &ttl).unwrap_err();
        assert!(added
            .to_string()
            .ends_with("received the value '1000' of type 'signedint' but current is none"));
        let dropped = check_queue_args(Q, &ttl, &FieldTable::new()).unwrap_err();
        assert!(dropped
            .to_string()
            .ends_with("received none but current is the value '1000' of type 'signedint'"));
    }

    #[test]
    fn integer_widths_and_unknown_arguments_are_equivalent() {
        let a = table(&[
            ("x-expires", FieldValue::I32(5)),
            ("colour", FieldValue::string("red")),
        ]);
        let b = table(&[
            ("x-expires", FieldValue::I64(5)),
            ("colour", FieldValue::string("blue")),
        ]);
        assert!(check_queue_args(Q, &a, &b).is_ok());
        assert!(check_exchange_args(Q, &a, &b).is_ok());
    }

    #[test]
    fn exchanges_compare_only_the_alternate_exchange() {
        let a = table(&[("alternate-exchange", FieldValue::string("ae1"))]);
        let b = table(&[("alternate-exchange", FieldValue::string("ae2"))]);
        let err = check_exchange_args("exchange 'x' in vhost '/'", &a, &b).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("'alternate-exchange' for exchange 'x' in vhost '/': received 'ae2' but current is 'ae1'"));
    }
}
