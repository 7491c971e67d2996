//! A stream's arguments (retention, segment size) and a consumer's choice of
//! where to start (`x-stream-offset`) and what to see (`x-stream-filter`),
//! with RabbitMQ's names, units and error texts.

use antre_amqp::{FieldTable, FieldValue};

use crate::equivalence::type_name;
use crate::error::{queue_ref, BrokerError};

/// osiris's default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 500_000_000;
/// RabbitMQ's ceiling on `x-stream-max-segment-size-bytes` (3 GB).
pub const MAX_SEGMENT_SIZE: u64 = 3_000_000_000;

/// osiris's default size of a chunk's Bloom filter (bytes).
pub const DEFAULT_FILTER_SIZE: u8 = 16;

/// What a stream's arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamArgs {
    /// `x-max-length-bytes`: drop the oldest segments while the stream is
    /// larger.
    pub max_length_bytes: Option<u64>,
    /// `x-max-age`: drop segments whose newest chunk is older (ms).
    pub max_age_ms: Option<u64>,
    /// `x-stream-max-segment-size-bytes`: when to start a new segment.
    pub max_segment_size: u64,
    /// `x-stream-filter-size-bytes` (16 to 255): the size of each chunk's
    /// Bloom filter of filter values.
    pub filter_size: u8,
}

impl StreamArgs {
    /// These arguments with a policy definition's keys applied: for
    /// retention the stricter value wins, as for queues' limits; the
    /// policy's segment size wins over the argument. A policy's filter size
    /// is not applied (RabbitMQ reads it only when a stream is declared).
    pub fn with_policy(
        &self,
        definition: &serde_json::Map<String, serde_json::Value>,
    ) -> StreamArgs {
        let stricter = |own: Option<u64>, policy: Option<u64>| match (own, policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let bytes = definition
            .get("max-length-bytes")
            .and_then(serde_json::Value::as_u64);
        let age = definition
            .get("max-age")
            .and_then(serde_json::Value::as_str)
            .and_then(parse_age);
        // The policy's segment size wins over the argument, as RabbitMQ's
        // policy_precedence has it (a value out of range is ignored).
        let segment = definition
            .get("stream-max-segment-size-bytes")
            .and_then(serde_json::Value::as_u64)
            .filter(|n| (1..=MAX_SEGMENT_SIZE).contains(n));
        StreamArgs {
            max_length_bytes: stricter(self.max_length_bytes, bytes),
            max_age_ms: stricter(self.max_age_ms, age),
            max_segment_size: segment.unwrap_or(self.max_segment_size),
            filter_size: self.filter_size,
        }
    }

    /// Parses a stream's declaration arguments.
    pub fn parse(args: &FieldTable, vhost: &str, name: &str) -> Result<StreamArgs, BrokerError> {
        let invalid = |arg: &str, why: String| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{arg}' for {}: {why}",
                queue_ref(vhost, name)
            ))
        };
        let int = |arg: &str| -> Result<Option<u64>, BrokerError> {
            match args.get(arg) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    Some(n) => Err(invalid(arg, format!("{{value_negative,{n}}}"))),
                    None => Err(invalid(
                        arg,
                        format!("\"expected integer, got {}\"", type_name(v)),
                    )),
                },
            }
        };
        let max_age_ms = match args.get("x-max-age") {
            None => None,
            Some(v) => {
                let text = v.as_str().unwrap_or_default();
                match parse_age(text) {
                    Some(ms) => Some(ms),
                    None => {
                        return Err(invalid("x-max-age", format!("{{invalid_max_age,{text}}}")))
                    }
                }
            }
        };
        let max_segment_size = int("x-stream-max-segment-size-bytes")?;
        if max_segment_size.is_some_and(|n| n > MAX_SEGMENT_SIZE) {
            return Err(BrokerError::PreconditionFailed(
                "Exceeded max value for x-stream-max-segment-size-bytes".into(),
            ));
        }
        let filter_size = match int("x-stream-filter-size-bytes")? {
            None => DEFAULT_FILTER_SIZE,
            Some(n @ 16..=255) => n as u8,
            Some(n) => {
                return Err(invalid(
                    "x-stream-filter-size-bytes",
                    format!("{{invalid_filter_size,{n}}}"),
                ))
            }
        };
        Ok(StreamArgs {
            max_length_bytes: int("x-max-length-bytes")?,
            max_age_ms,
            max_segment_size: max_segment_size
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_SEGMENT_SIZE),
            filter_size,
        })
    }
}

/// An age as RabbitMQ writes it (`x-max-age`, and a `x-stream-offset`
/// interval): a positive integer and a unit, Y(ears of 365 days), M(onths of
/// 30 days), D(ays), h(ours), m(inutes) or s(econds), in ms.
pub fn parse_age(text: &str) -> Option<u64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    let n: u64 = digits.parse().ok().filter(|n| *n > 0)?;
    let second = 1000;
    let day = 24 * 3600 * second;
    let per = match unit {
        "Y" => 365 * day,
        "M" => 30 * day,
        "D" => day,
        "h" => 3600 * second,
        "m" => 60 * second,
        "s" => second,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Where a consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The oldest message the stream still holds.
    First,
    /// The start of the last chunk written.
    Last,
    /// Only messages written from now on (the default).
    Next,
    /// This offset (clamped to what the stream holds).
    Offset(u64),
    /// The first chunk written at or after this time (ms).
    Timestamp(u64),
}

impl OffsetSpec {
    /// Parses `x-stream-offset` from a consumer's arguments; `now` turns an
    /// interval (`1h`) into a timestamp.
    pub fn parse(args: &FieldTable, now: u64) -> Result<OffsetSpec, BrokerError> {
        let Some(v) = args.get("x-stream-offset") else {
            return Ok(OffsetSpec::Next);
        };
        let bad = || {
            BrokerError::PreconditionFailed(format!(
                "invalid arg 'x-stream-offset': {{invalid_offset_arg,{}}}",
                describe(v)
            ))
        };
        match v {
            // An AMQP timestamp counts seconds.
            FieldValue::Timestamp(secs) => Ok(OffsetSpec::Timestamp(secs.saturating_mul(1000))),
            FieldValue::LongString(_) => match v.as_str().unwrap_or_default() {
                "first" => Ok(OffsetSpec::First),
                "last" => Ok(OffsetSpec::Last),
                "next" => Ok(OffsetSpec::Next),
                interval => parse_age(interval)
                    .map(|ms| OffsetSpec::Timestamp(now.saturating_sub(ms)))
                    .ok_or_else(bad),
            },
            other => match other.as_i64() {
                Some(n) if n >= 0 => Ok(OffsetSpec::Offset(n as u64)),
                _ => Err(bad()),
            },
        }
    }
}

fn describe(v: &FieldValue) -> String {
    match v.as_str() {
        Some(s) => s.to_owned(),
        None => format!("{v:?}"),
    }
}

/// The header a publisher sets to tag a message for filtering.
pub const FILTER_VALUE_HEADER: &str = "x-stream-filter-value";

/// What a consumer wants to see (`x-stream-filter`,
/// `x-stream-match-unfiltered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    values: Vec<String>,
    match_unfiltered: bool,
}

impl Filter {
    /// The filter a consumer's arguments ask for, if any.
    pub fn parse(args: &FieldTable) -> Result<Option<Filter>, BrokerError> {
        let values = match args.get("x-stream-filter") {
            None => return Ok(None),
            Some(FieldValue::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            Some(v) => match v.as_str() {
                Some(s) => vec![s.to_owned()],
                None => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "invalid arg 'x-stream-filter': \"expected string or array, got {}\"",
                        type_name(v)
                    )))
                }
            },
        };
        let match_unfiltered = args
            .get("x-stream-match-unfiltered")
            .and_then(FieldValue::as_bool)
            .unwrap_or(false);
        Ok(Some(Filter {
            values,
            match_unfiltered,
        }))
    }

    /// The chunks that may hold messages it wants (by their bloom filters).
    pub fn chunk_filter(&self) -> antre_stream_proto::chunk::ChunkFilter {
        antre_stream_proto::chunk::ChunkFilter {
            values: self.values.clone(),
            match_unfiltered: self.match_unfiltered,
        }
    }

    /// Whether a message with this filter value (None: it has none) passes.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => self.values.iter().any(|f| f == v),
            None => self.match_unfiltered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_rabbitmqs_units() {
        assert_eq!(parse_age("7D"), Some(7 * 24 * 3600 * 1000));
        assert_eq!(parse_age("12h"), Some(12 * 3600 * 1000));
        assert_eq!(parse_age("1Y"), Some(365 * 24 * 3600 * 1000));
        assert_eq!(parse_age("30s"), Some(30_000));
        for bad in ["", "h", "0h", "7d", "7", "-1h", "1.5h"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_parse_every_kind() {
        let spec = |v: FieldValue| {
            let mut t = FieldTable::default();
            t.insert("x-stream-offset", v);
            OffsetSpec::parse(&t, 10_000_000)
        };
        assert_eq!(
            OffsetSpec::parse(&FieldTable::default(), 0),
            Ok(OffsetSpec::Next)
        );
        assert_eq!(spec(FieldValue::string("first")), Ok(OffsetSpec::First));
        assert_eq!(spec(FieldValue::string("last")), Ok(OffsetSpec::Last));
        assert_eq!(spec(FieldValue::I64(42)), Ok(OffsetSpec::Offset(42)));
        assert_eq!(
            spec(FieldValue::Timestamp(5)),
            Ok(OffsetSpec::Timestamp(5000))
        );
        assert_eq!(
            spec(FieldValue::string("1h")),
            Ok(OffsetSpec::Timestamp(10_000_000 - 3_600_000))
        );
        assert!(spec(FieldValue::string("soon")).is_err());
        assert!(spec(FieldValue::I64(-1)).is_err());
    }

    #[test]
    fn segment_size_has_rabbitmqs_ceiling() {
        let mut t = FieldTable::default();
        t.insert(
            "x-stream-max-segment-size-bytes",
            FieldValue::I64(4_000_000_000),
        );
        let e = StreamArgs::parse(&t, "/", "s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes"
        );
    }
}
