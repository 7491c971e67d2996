//! Field tables and field values, in RabbitMQ's dialect of the type tags.
//!
//! The 0-9-1 spec and RabbitMQ disagree on a few tags (`s` is a short int in
//! RabbitMQ, a short string in the spec); every client in use follows
//! RabbitMQ, so this codec does too (see RabbitMQ's "AMQP 0-9-1 errata").

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_shortstr, Decoder};
use crate::error::CodecError;

/// How deep tables and arrays may nest. Decoding recurses, so without a bound
/// a frame full of nested table headers could overflow the stack.
pub const MAX_NESTING: usize = 64;

/// One value in a field table or array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit.
    I8(i8),
    /// `B`: unsigned 8-bit.
    U8(u8),
    /// `s`: signed 16-bit.
    I16(i16),
    /// `u`: unsigned 16-bit.
    U16(u16),
    /// `I`: signed 32-bit.
    I32(i32),
    /// `i`: unsigned 32-bit.
    U32(u32),
    /// `l`: signed 64-bit.
    I64(i64),
    /// `f`: 32-bit float.
    F32(f32),
    /// `d`: 64-bit float.
    F64(f64),
    /// `D`: decimal, value × 10^-scale.
    Decimal {
        /// Number of decimal digits.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// `S`: long string (raw bytes, usually UTF-8).
    LongString(Bytes),
    /// `A`: array of values.
    Array(Vec<FieldValue>),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array.
    ByteArray(Bytes),
}

impl FieldValue {
    /// A long string value from text.
    pub fn string(s: impl Into<String>) -> Self {
        FieldValue::LongString(Bytes::from(s.into()))
    }

    /// The value as an integer, for the many arguments (TTLs, limits,
    /// priorities) that clients send in whichever integer width they like.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as text, for long strings that are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn decode(d: &mut Decoder, depth: usize) -> Result<FieldValue, CodecError> {
        let tag = d.octet()?;
        Ok(match tag {
            b't' => FieldValue::Bool(d.octet()? != 0),
            b'b' => FieldValue::I8(d.octet()? as i8),
            b'B' => FieldValue::U8(d.octet()?),
            b's' => FieldValue::I16(d.short()? as i16),
            b'u' => FieldValue::U16(d.short()?),
            b'I' => FieldValue::I32(d.long()? as i32),
            b'i' => FieldValue::U32(d.long()?),
            // 'L' is the 0-9-1 spec's long-long-uint, but py-amqp (the
            // client of Celery and kombu) writes every integer beyond 32
            // bits with it, signed; RabbitMQ reads it as a signed 'l' and
            // so does antre (it is sent back as 'l').
            b'l' | b'L' => FieldValue::I64(d.longlong()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(d.long()?)),
            b'd' => FieldValue::F64(f64::from_bits(d.longlong()?)),
            b'D' => FieldValue::Decimal {
                scale: d.octet()?,
                value: d.long()?,
            },
            b'S' => FieldValue::LongString(d.longstr()?),
            b'A' => {
                if depth >= MAX_NESTING {
                    return Err(CodecError::TooDeep);
                }
                let raw = d.longstr()?;
                let mut inner = Decoder::new(raw, "field array");
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(FieldValue::decode(&mut inner, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(d.longlong()?),
            b'F' => {
                if depth >= MAX_NESTING {
                    return Err(CodecError::TooDeep);
                }
                FieldValue::Table(FieldTable::decode(d.longstr()?, depth + 1)?)
            }
            b'V' => FieldValue::Void,
            b'x' => FieldValue::ByteArray(d.longstr()?),
            other => return Err(CodecError::UnknownFieldType(other as char)),
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            FieldValue::Bool(v) => {
                out.put_u8(b't');
                out.put_u8(u8::from(*v));
            }
            FieldValue::I8(v) => {
                out.put_u8(b'b');
                out.put_i8(*v);
            }
            FieldValue::U8(v) => {
                out.put_u8(b'B');
                out.put_u8(*v);
            }
            FieldValue::I16(v) => {
                out.put_u8(b's');
                out.put_i16(*v);
            }
            FieldValue::U16(v) => {
                out.put_u8(b'u');
                out.put_u16(*v);
            }
            FieldValue::I32(v) => {
                out.put_u8(b'I');
                out.put_i32(*v);
            }
            FieldValue::U32(v) => {
                out.put_u8(b'i');
                out.put_u32(*v);
            }
            FieldValue::I64(v) => {
                out.put_u8(b'l');
                out.put_i64(*v);
            }
            FieldValue::F32(v) => {
                out.put_u8(b'f');
                out.put_f32(*v);
            }
            FieldValue::F64(v) => {
                out.put_u8(b'd');
                out.put_f64(*v);
            }
            FieldValue::Decimal { scale, value } => {
                out.put_u8(b'D');
                out.put_u8(*scale);
                out.put_u32(*value);
            }
            FieldValue::LongString(v) => {
                out.put_u8(b'S');
                out.put_u32(v.len() as u32);
                out.put_slice(v);
            }
            FieldValue::Array(items) => {
                out.put_u8(b'A');
                with_length_prefix(out, |out| {
                    for item in items {
                        item.encode(out);
                    }
                });
            }
            FieldValue::Timestamp(v) => {
                out.put_u8(b'T');
                out.put_u64(*v);
            }
            FieldValue::Table(t) => {
                out.put_u8(b'F');
                t.encode(out);
            }
            FieldValue::Void => out.put_u8(b'V'),
            FieldValue::ByteArray(v) => {
                out.put_u8(b'x');
                out.put_u32(v.len() as u32);
                out.put_slice(v);
            }
        }
    }
}

/// Writes a u32 length, then what `body` writes, then patches the length.
fn with_length_prefix(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A field table: named values in the order the peer sent them.
///
/// A vector, not a map: tables are small (a handful of arguments or headers),
/// order is kept for faithful re-encoding, and lookups are linear but short.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// The value under `key`, if any (the first one, should a peer repeat a key).
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Decodes the entries of a table whose length prefix was already read.
    pub fn decode(raw: Bytes, depth: usize) -> Result<FieldTable, CodecError> {
        let mut d = Decoder::new(raw, "field table");
        let mut entries = Vec::new();
        while d.remaining() > 0 {
            let key = d.shortstr()?;
            let value = FieldValue::decode(&mut d, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// Encodes the table with its u32 length prefix.
    pub fn encode(&self, out: &mut BytesMut) {
        with_length_prefix(out, |out| {
            for (k, v) in &self.0 {
                put_shortstr(out, k);
                v.encode(out);
            }
        });
    }
}

impl<K: Into<String>> FromIterator<(K, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        let mut t = FieldTable::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(t: &FieldTable) -> FieldTable {
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let mut d = Decoder::new(out.freeze(), "test");
        let back = d.table().expect("decodes");
        assert_eq!(d.remaining(), 0);
        back
    }

    #[test]
    fn every_value_type_round_trips() {
        let inner: FieldTable = [("x", FieldValue::I32(-5))].into_iter().collect();
        let t: FieldTable = [
            ("bool", FieldValue::Bool(true)),
            ("i8", FieldValue::I8(-1)),
            ("u8", FieldValue::U8(255)),
            ("i16", FieldValue::I16(-300)),
            ("u16", FieldValue::U16(60000)),
            ("i32", FieldValue::I32(-70000)),
            ("u32", FieldValue::U32(4_000_000_000)),
            ("i64", FieldValue::I64(-1 << 40)),
            ("f32", FieldValue::F32(1.5)),
            ("f64", FieldValue::F64(-2.25)),
            (
                "dec",
                FieldValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            ),
            ("str", FieldValue::string("héllo")),
            (
                "arr",
                FieldValue::Array(vec![FieldValue::I8(1), FieldValue::string("a")]),
            ),
            ("ts", FieldValue::Timestamp(1_700_000_000)),
            ("tbl", FieldValue::Table(inner)),
            ("void", FieldValue::Void),
            (
                "bytes",
                FieldValue::ByteArray(Bytes::from_static(b"\x00\x01")),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(round_trip(&t), t);
    }

    /// py-amqp writes Celery's delayed-delivery queues' `x-message-ttl`
    /// (up to 2^27 s in ms) tagged 'L': read as RabbitMQ reads it, a signed
    /// 64-bit 'l'. Before, the declare closed the connection (502
    /// "unknown field value type 'L'").
    #[test]
    fn a_long_long_tagged_capital_l_reads_as_a_signed_long() {
        let mut raw = vec![3, b't', b't', b'l', b'L'];
        raw.extend_from_slice(&134_217_728_000_i64.to_be_bytes());
        raw.extend_from_slice(&[1, b'a', b'A', 0, 0, 0, 9, b'L']);
        raw.extend_from_slice(&(-5_i64).to_be_bytes());
        let t = FieldTable::decode(Bytes::from(raw), 0).expect("decodes");
        assert_eq!(t.get("ttl"), Some(&FieldValue::I64(134_217_728_000)));
        assert_eq!(
            t.get("a"),
            Some(&FieldValue::Array(vec![FieldValue::I64(-5)]))
        );
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let tagged = |tag: u8| out.windows(4).any(|w| w == [b't', b't', b'l', tag]);
        assert!(tagged(b'l') && !tagged(b'L'), "sent back as 'l': {out:?}");
    }

    #[test]
    fn insert_replaces_and_get_finds() {
        let mut t = FieldTable::new();
        t.insert("a", FieldValue::I8(1));
        t.insert("a", FieldValue::I8(2));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a").and_then(FieldValue::as_i64), Some(2));
        assert_eq!(t.remove("a"), Some(FieldValue::I8(2)));
        assert!(t.is_empty());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Build the bytes of 10_000 nested tables by hand: each level is
        // key "k", tag 'F', length of the rest.
        let mut payload: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            let mut level = vec![1, b'k', b'F'];
            level.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            level.extend_from_slice(&payload);
            payload = level;
        }
        let err = FieldTable::decode(Bytes::from(payload), 0).unwrap_err();
        assert_eq!(err, CodecError::TooDeep);
    }

    #[test]
    fn truncated_and_unknown_values_are_errors() {
        let bad_len = Bytes::from_static(&[1, b'k', b'S', 0, 0, 0, 9, b'a']);
        assert!(matches!(
            FieldTable::decode(bad_len, 0),
            Err(CodecError::Truncated(_))
        ));
        let bad_tag = Bytes::from_static(&[1, b'k', b'Z']);
        assert_eq!(
            FieldTable::decode(bad_tag, 0),
            Err(CodecError::UnknownFieldType('Z'))
        );
    }
}
