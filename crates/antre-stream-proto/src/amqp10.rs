//! The AMQP 1.0 message format, the subset a stream record uses: the type
//! system's values and a message's sections (header, message annotations,
//! properties, application properties, body). RabbitMQ stores every stream
//! message this way, whichever protocol published it, and stream-protocol
//! clients decode records as AMQP 1.0 messages; antre does the same so a
//! stream written over AMQP 0-9-1 reads over the stream protocol and back.
//!
//! Hand-written because the AMQP 1.0 crates on crates.io are whole client
//! stacks (fe2o3-amqp with serde machinery); the message format alone is a
//! few hundred lines.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// How deep lists, maps and described values may nest when decoding.
pub const MAX_NESTING: usize = 32;

/// An AMQP 1.0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// null.
    Null,
    /// boolean.
    Bool(bool),
    /// ubyte.
    Ubyte(u8),
    /// ushort.
    Ushort(u16),
    /// uint.
    Uint(u32),
    /// ulong.
    Ulong(u64),
    /// byte.
    Byte(i8),
    /// short.
    Short(i16),
    /// int.
    Int(i32),
    /// long.
    Long(i64),
    /// float.
    Float(f32),
    /// double.
    Double(f64),
    /// char (a Unicode scalar as u32).
    Char(u32),
    /// timestamp: ms since the epoch.
    Timestamp(i64),
    /// uuid.
    Uuid([u8; 16]),
    /// binary.
    Binary(Bytes),
    /// string (UTF-8).
    String(String),
    /// symbol (ASCII).
    Symbol(String),
    /// list.
    List(Vec<Value>),
    /// map, in wire order.
    Map(Vec<(Value, Value)>),
    /// array (elements of one type).
    Array(Vec<Value>),
    /// A described value: descriptor, value.
    Described(Box<Value>, Box<Value>),
}

/// A record that is not a readable AMQP 1.0 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("truncated AMQP 1.0 value")]
    Truncated,
    /// A format code this decoder does not know.
    #[error("unknown AMQP 1.0 format code 0x{0:02x}")]
    UnknownCode(u8),
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in AMQP 1.0 string")]
    Utf8,
    /// Nesting beyond [`MAX_NESTING`].
    #[error("AMQP 1.0 value nested too deeply")]
    TooDeep,
    /// Something that is not a message section where one was expected.
    #[error("not an AMQP 1.0 message section")]
    NotASection,
}

impl Value {
    /// A string value.
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A symbol value.
    pub fn symbol(s: impl Into<String>) -> Value {
        Value::Symbol(s.into())
    }

    /// The text of a string or symbol.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    /// Writes the value with its constructor.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Null => out.put_u8(0x40),
            Value::Bool(true) => out.put_u8(0x41),
            Value::Bool(false) => out.put_u8(0x42),
            Value::Ubyte(v) => {
                out.put_u8(0x50);
                out.put_u8(*v);
            }
            Value::Ushort(v) => {
                out.put_u8(0x60);
                out.put_u16(*v);
            }
            Value::Uint(0) => out.put_u8(0x43),
            Value::Uint(v) if *v < 256 => {
                out.put_u8(0x52);
                out.put_u8(*v as u8);
            }
            Value::Ulong(0) => out.put_u8(0x44),
            Value::Ulong(v) if *v < 256 => {
                out.put_u8(0x53);
                out.put_u8(*v as u8);
            }
            Value::Int(v) if i8::try_from(*v).is_ok() => {
                out.put_u8(0x54);
                out.put_i8(*v as i8);
            }
            Value::Long(v) if i8::try_from(*v).is_ok() => {
                out.put_u8(0x55);
                out.put_i8(*v as i8);
            }
            Value::Byte(v) => {
                out.put_u8(0x51);
                out.put_i8(*v);
            }
            Value::Short(v) => {
                out.put_u8(0x61);
                out.put_i16(*v);
            }
            Value::Binary(b) if b.len() < 256 => {
                out.put_u8(0xa0);
                out.put_u8(b.len() as u8);
                out.put_slice(b);
            }
            Value::String(s) if s.len() < 256 => {
                out.put_u8(0xa1);
                out.put_u8(s.len() as u8);
                out.put_slice(s.as_bytes());
            }
            Value::Symbol(s) if s.len() < 256 => {
                out.put_u8(0xa3);
                out.put_u8(s.len() as u8);
                out.put_slice(s.as_bytes());
            }
            Value::List(items) if items.is_empty() => out.put_u8(0x45),
            Value::Described(d, v) => {
                out.put_u8(0x00);
                d.encode(out);
                v.encode(out);
            }
            Value::Array(items) => encode_array(items, out),
            // The rest in their wide forms.
            other => {
                out.put_u8(wide_code(other));
                encode_wide_body(other, out);
            }
        }
    }

    /// Reads one value (with its constructor) from `b`.
    pub fn decode(b: &mut Bytes) -> Result<Value, DecodeError> {
        decode_value(b, 0)
    }
}

/// The format code of a value in its widest (fixed) form, used for arrays,
/// whose elements share one constructor.
fn wide_code(v: &Value) -> u8 {
    match v {
        Value::Null => 0x40,
        Value::Bool(_) => 0x56,
        Value::Ubyte(_) => 0x50,
        Value::Ushort(_) => 0x60,
        Value::Uint(_) => 0x70,
        Value::Ulong(_) => 0x80,
        Value::Byte(_) => 0x51,
        Value::Short(_) => 0x61,
        Value::Int(_) => 0x71,
        Value::Long(_) => 0x81,
        Value::Float(_) => 0x72,
        Value::Double(_) => 0x82,
        Value::Char(_) => 0x73,
        Value::Timestamp(_) => 0x83,
        Value::Uuid(_) => 0x98,
        Value::Binary(_) => 0xb0,
        Value::String(_) => 0xb1,
        Value::Symbol(_) => 0xb3,
        Value::List(_) => 0xd0,
        Value::Map(_) => 0xd1,
        Value::Array(_) => 0xf0,
        Value::Described(..) => 0x00,
    }
}

/// Writes a value's body in the form [`wide_code`] names.
fn encode_wide_body(v: &Value, out: &mut BytesMut) {
    match v {
        Value::Null => {}
        Value::Bool(b) => out.put_u8(u8::from(*b)),
        Value::Ubyte(x) => out.put_u8(*x),
        Value::Ushort(x) => out.put_u16(*x),
        Value::Uint(x) => out.put_u32(*x),
        Value::Ulong(x) => out.put_u64(*x),
        Value::Byte(x) => out.put_i8(*x),
        Value::Short(x) => out.put_i16(*x),
        Value::Int(x) => out.put_i32(*x),
        Value::Long(x) => out.put_i64(*x),
        Value::Float(x) => out.put_f32(*x),
        Value::Double(x) => out.put_f64(*x),
        Value::Char(x) => out.put_u32(*x),
        Value::Timestamp(x) => out.put_i64(*x),
        Value::Uuid(x) => out.put_slice(x),
        Value::Binary(b) => {
            out.put_u32(b.len() as u32);
            out.put_slice(b);
        }
        Value::String(s) | Value::Symbol(s) => {
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
        Value::List(items) => compound32(items.len(), out, |out| {
            items.iter().for_each(|i| i.encode(out))
        }),
        Value::Map(pairs) => compound32(pairs.len() * 2, out, |out| {
            for (k, v) in pairs {
                k.encode(out);
                v.encode(out);
            }
        }),
        Value::Array(items) => {
            // Nested array body: size, count, constructor, elements.
            let at = out.len();
            out.put_u32(0);
            out.put_u32(items.len() as u32);
            array_elements(items, out);
            let size = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&size.to_be_bytes());
        }
        Value::Described(d, v) => {
            d.encode(out);
            v.encode(out);
        }
    }
}

/// A list32 or map32 body: size, count, then the items.
fn compound32(count: usize, out: &mut BytesMut, items: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32(0);
    out.put_u32(count as u32);
    items(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn encode_array(items: &[Value], out: &mut BytesMut) {
    out.put_u8(0xf0);
    encode_wide_body(&Value::Array(items.to_vec()), out);
}

/// An array's shared constructor and its elements' bodies.
fn array_elements(items: &[Value], out: &mut BytesMut) {
    let Some(first) = items.first() else {
        out.put_u8(0x40);
        return;
    };
    match first {
        Value::Described(d, _) => {
            out.put_u8(0x00);
            d.encode(out);
            let inner = items.first().map(|i| match i {
                Value::Described(_, v) => wide_code(v),
                other => wide_code(other),
            });
            out.put_u8(inner.unwrap_or(0x40));
            for i in items {
                if let Value::Described(_, v) = i {
                    encode_wide_body(v, out);
                }
            }
        }
        _ => {
            out.put_u8(wide_code(first));
            items.iter().for_each(|i| encode_wide_body(i, out));
        }
    }
}

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        return Err(DecodeError::Truncated);
    }
    Ok(())
}

fn take(b: &mut Bytes, n: usize) -> Result<Bytes, DecodeError> {
    need(b, n)?;
    Ok(b.split_to(n))
}

fn utf8(raw: Bytes) -> Result<String, DecodeError> {
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Utf8)
}

fn decode_value(b: &mut Bytes, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep);
    }
    need(b, 1)?;
    let code = b.get_u8();
    if code == 0x00 {
        let descriptor = decode_value(b, depth + 1)?;
        let value = decode_value(b, depth + 1)?;
        return Ok(Value::Described(Box::new(descriptor), Box::new(value)));
    }
    decode_body(code, b, depth)
}

/// Reads the body of a value whose constructor was `code`.
fn decode_body(code: u8, b: &mut Bytes, depth: usize) -> Result<Value, DecodeError> {
    macro_rules! fixed {
        ($n:expr, $get:ident) => {{
            need(b, $n)?;
            b.$get()
        }};
    }
    Ok(match code {
        0x40 => Value::Null,
        0x41 => Value::Bool(true),
        0x42 => Value::Bool(false),
        0x56 => Value::Bool(fixed!(1, get_u8) != 0),
        0x50 => Value::Ubyte(fixed!(1, get_u8)),
        0x60 => Value::Ushort(fixed!(2, get_u16)),
        0x70 => Value::Uint(fixed!(4, get_u32)),
        0x52 => Value::Uint(u32::from(fixed!(1, get_u8))),
        0x43 => Value::Uint(0),
        0x80 => Value::Ulong(fixed!(8, get_u64)),
        0x53 => Value::Ulong(u64::from(fixed!(1, get_u8))),
        0x44 => Value::Ulong(0),
        0x51 => Value::Byte(fixed!(1, get_i8)),
        0x61 => Value::Short(fixed!(2, get_i16)),
        0x71 => Value::Int(fixed!(4, get_i32)),
        0x54 => Value::Int(i32::from(fixed!(1, get_i8))),
        0x81 => Value::Long(fixed!(8, get_i64)),
        0x55 => Value::Long(i64::from(fixed!(1, get_i8))),
        0x72 => Value::Float(fixed!(4, get_f32)),
        0x82 => Value::Double(fixed!(8, get_f64)),
        0x73 => Value::Char(fixed!(4, get_u32)),
        0x83 => Value::Timestamp(fixed!(8, get_i64)),
        0x98 => {
            let raw = take(b, 16)?;
            let mut u = [0u8; 16];
            u.copy_from_slice(&raw);
            Value::Uuid(u)
        }
        0xa0 => {
            let n = usize::from(fixed!(1, get_u8));
            Value::Binary(take(b, n)?)
        }
        0xb0 => {
            let n = fixed!(4, get_u32) as usize;
            Value::Binary(take(b, n)?)
        }
        0xa1 => {
            let n = usize::from(fixed!(1, get_u8));
            Value::String(utf8(take(b, n)?)?)
        }
        0xb1 => {
            let n = fixed!(4, get_u32) as usize;
            Value::String(utf8(take(b, n)?)?)
        }
        0xa3 => {
            let n = usize::from(fixed!(1, get_u8));
            Value::Symbol(utf8(take(b, n)?)?)
        }
        0xb3 => {
            let n = fixed!(4, get_u32) as usize;
            Value::Symbol(utf8(take(b, n)?)?)
        }
        0x45 => Value::List(Vec::new()),
        0xc0 | 0xd0 | 0xc1 | 0xd1 => {
            let wide = code & 0xf0 == 0xd0;
            let (size, count) = if wide {
                need(b, 8)?;
                (b.get_u32() as usize, b.get_u32() as usize)
            } else {
                need(b, 2)?;
                (usize::from(b.get_u8()), usize::from(b.get_u8()))
            };
            let counted = if wide { 4 } else { 1 };
            let mut body = take(b, size.checked_sub(counted).ok_or(DecodeError::Truncated)?)?;
            let mut items = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                items.push(decode_value(&mut body, depth + 1)?);
            }
            if code & 0x0f == 0x01 {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            } else {
                Value::List(items)
            }
        }
        0xe0 | 0xf0 => {
            let (size, count) = if code == 0xf0 {
                need(b, 8)?;
                (b.get_u32() as usize, b.get_u32() as usize)
            } else {
                need(b, 2)?;
                (usize::from(b.get_u8()), usize::from(b.get_u8()))
            };
            let counted = if code == 0xf0 { 4 } else { 1 };
            let mut body = take(b, size.checked_sub(counted).ok_or(DecodeError::Truncated)?)?;
            need(&body, 1)?;
            let mut element = body.get_u8();
            let mut descriptor = None;
            if element == 0x00 {
                descriptor = Some(decode_value(&mut body, depth + 1)?);
                need(&body, 1)?;
                element = body.get_u8();
            }
            let mut items = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                let v = decode_body(element, &mut body, depth + 1)?;
                items.push(match &descriptor {
                    Some(d) => Value::Described(Box::new(d.clone()), Box::new(v)),
                    None => v,
                });
            }
            Value::Array(items)
        }
        other => return Err(DecodeError::UnknownCode(other)),
    })
}

/// Section descriptors (small ulong codes).
mod section {
    pub const HEADER: u64 = 0x70;
    pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub const PROPERTIES: u64 = 0x73;
    pub const APPLICATION_PROPERTIES: u64 = 0x74;
    pub const DATA: u64 = 0x75;
    pub const SEQUENCE: u64 = 0x76;
    pub const VALUE: u64 = 0x77;
    pub const FOOTER: u64 = 0x78;
}

/// The fields of the properties section, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// message-id.
    pub message_id: Option<Value>,
    /// user-id.
    pub user_id: Option<Bytes>,
    /// to.
    pub to: Option<String>,
    /// subject.
    pub subject: Option<String>,
    /// reply-to.
    pub reply_to: Option<String>,
    /// correlation-id.
    pub correlation_id: Option<Value>,
    /// content-type (a symbol).
    pub content_type: Option<String>,
    /// content-encoding (a symbol).
    pub content_encoding: Option<String>,
    /// absolute-expiry-time, ms.
    pub absolute_expiry_time: Option<i64>,
    /// creation-time, ms.
    pub creation_time: Option<i64>,
    /// group-id.
    pub group_id: Option<String>,
    /// group-sequence.
    pub group_sequence: Option<u32>,
    /// reply-to-group-id.
    pub reply_to_group_id: Option<String>,
}

impl Properties {
    fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    fn to_list(&self) -> Vec<Value> {
        let s = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let mut list = vec![
            self.message_id.clone().unwrap_or(Value::Null),
            self.user_id.clone().map_or(Value::Null, Value::Binary),
            s(&self.to),
            s(&self.subject),
            s(&self.reply_to),
            self.correlation_id.clone().unwrap_or(Value::Null),
            self.content_type.clone().map_or(Value::Null, Value::Symbol),
            self.content_encoding
                .clone()
                .map_or(Value::Null, Value::Symbol),
            self.absolute_expiry_time
                .map_or(Value::Null, Value::Timestamp),
            self.creation_time.map_or(Value::Null, Value::Timestamp),
            s(&self.group_id),
            self.group_sequence.map_or(Value::Null, Value::Uint),
            s(&self.reply_to_group_id),
        ];
        // Trailing nulls may be left out.
        while list.last() == Some(&Value::Null) {
            list.pop();
        }
        list
    }

    fn from_list(list: Vec<Value>) -> Properties {
        let mut it = list.into_iter();
        let mut next = || it.next().filter(|v| *v != Value::Null);
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_owned));
        let time = |v: Option<Value>| match v {
            Some(Value::Timestamp(t)) => Some(t),
            _ => None,
        };
        Properties {
            message_id: next(),
            user_id: match next() {
                Some(Value::Binary(b)) => Some(b),
                Some(Value::String(s)) => Some(Bytes::from(s.into_bytes())),
                _ => None,
            },
            to: text(next()),
            subject: text(next()),
            reply_to: text(next()),
            correlation_id: next(),
            content_type: text(next()),
            content_encoding: text(next()),
            absolute_expiry_time: time(next()),
            creation_time: time(next()),
            group_id: text(next()),
            group_sequence: match next() {
                Some(Value::Uint(n)) => Some(n),
                _ => None,
            },
            reply_to_group_id: text(next()),
        }
    }
}

/// A message's body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Data sections (opaque bytes), usually one.
    Data(Vec<Bytes>),
    /// An amqp-value section.
    Value(Value),
    /// amqp-sequence sections.
    Sequence(Vec<Vec<Value>>),
}

impl Default for Body {
    fn default() -> Body {
        Body::Data(Vec::new())
    }
}

/// An AMQP 1.0 message: the sections a stream record holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The header section's fields (durable, priority, ttl, ...), if any.
    pub header: Option<Vec<Value>>,
    /// Message annotations (keys are symbols).
    pub message_annotations: Vec<(Value, Value)>,
    /// The properties section.
    pub properties: Properties,
    /// Application properties (keys are strings).
    pub application_properties: Vec<(Value, Value)>,
    /// The body.
    pub body: Body,
}

fn described(code: u64, value: Value) -> Value {
    Value::Described(Box::new(Value::Ulong(code)), Box::new(value))
}

impl Message {
    /// A message annotation by its (symbol) key.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        lookup(&self.message_annotations, key)
    }

    /// An application property by its (string) key.
    pub fn application_property(&self, key: &str) -> Option<&Value> {
        lookup(&self.application_properties, key)
    }

    /// The body's bytes: data sections joined, or a string or binary value.
    pub fn body_bytes(&self) -> Bytes {
        match &self.body {
            Body::Data(parts) if parts.len() == 1 => parts[0].clone(),
            Body::Data(parts) => {
                let mut out = BytesMut::new();
                parts.iter().for_each(|p| out.put_slice(p));
                out.freeze()
            }
            Body::Value(Value::Binary(b)) => b.clone(),
            Body::Value(Value::String(s)) => Bytes::from(s.clone().into_bytes()),
            Body::Value(v) => {
                let mut out = BytesMut::new();
                v.encode(&mut out);
                out.freeze()
            }
            Body::Sequence(_) => Bytes::new(),
        }
    }

    /// Encodes the message's sections.
    pub fn encode(&self, out: &mut BytesMut) {
        if let Some(h) = &self.header {
            described(section::HEADER, Value::List(h.clone())).encode(out);
        }
        if !self.message_annotations.is_empty() {
            let map = Value::Map(self.message_annotations.clone());
            described(section::MESSAGE_ANNOTATIONS, map).encode(out);
        }
        if !self.properties.is_empty() {
            let list = Value::List(self.properties.to_list());
            described(section::PROPERTIES, list).encode(out);
        }
        if !self.application_properties.is_empty() {
            let map = Value::Map(self.application_properties.clone());
            described(section::APPLICATION_PROPERTIES, map).encode(out);
        }
        match &self.body {
            Body::Data(parts) => {
                for p in parts {
                    // The body directly, without cloning it into a Value.
                    out.put_slice(&[0x00, 0x53, section::DATA as u8]);
                    encode_wide_or_short_binary(p, out);
                }
            }
            Body::Value(v) => described(section::VALUE, v.clone()).encode(out),
            Body::Sequence(seqs) => {
                for s in seqs {
                    described(section::SEQUENCE, Value::List(s.clone())).encode(out);
                }
            }
        }
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes a message's sections; unknown sections (delivery
    /// annotations, footer) are skipped.
    pub fn decode(raw: Bytes) -> Result<Message, DecodeError> {
        let mut b = raw;
        let mut m = Message::default();
        let mut data = Vec::new();
        let mut sequences = Vec::new();
        while b.has_remaining() {
            let Value::Described(d, v) = Value::decode(&mut b)? else {
                return Err(DecodeError::NotASection);
            };
            let code = match *d {
                Value::Ulong(c) => c,
                Value::Symbol(s) => symbolic_section(&s).ok_or(DecodeError::NotASection)?,
                _ => return Err(DecodeError::NotASection),
            };
            match (code, *v) {
                (section::HEADER, Value::List(l)) => m.header = Some(l),
                (section::MESSAGE_ANNOTATIONS, Value::Map(p)) => m.message_annotations = p,
                (section::PROPERTIES, Value::List(l)) => m.properties = Properties::from_list(l),
                (section::APPLICATION_PROPERTIES, Value::Map(p)) => {
                    m.application_properties = p;
                }
                (section::DATA, Value::Binary(d)) => data.push(d),
                (section::SEQUENCE, Value::List(l)) => sequences.push(l),
                (section::VALUE, v) => m.body = Body::Value(v),
                (section::DELIVERY_ANNOTATIONS | section::FOOTER, _) => {}
                _ => return Err(DecodeError::NotASection),
            }
        }
        if !data.is_empty() {
            m.body = Body::Data(data);
        } else if !sequences.is_empty() {
            m.body = Body::Sequence(sequences);
        }
        Ok(m)
    }
}

fn encode_wide_or_short_binary(p: &Bytes, out: &mut BytesMut) {
    if p.len() < 256 {
        out.put_u8(0xa0);
        out.put_u8(p.len() as u8);
    } else {
        out.put_u8(0xb0);
        out.put_u32(p.len() as u32);
    }
    out.put_slice(p);
}

fn symbolic_section(name: &str) -> Option<u64> {
    Some(match name {
        "amqp:header:list" => section::HEADER,
        "amqp:delivery-annotations:map" => section::DELIVERY_ANNOTATIONS,
        "amqp:message-annotations:map" => section::MESSAGE_ANNOTATIONS,
        "amqp:properties:list" => section::PROPERTIES,
        "amqp:application-properties:map" => section::APPLICATION_PROPERTIES,
        "amqp:data:binary" => section::DATA,
        "amqp:amqp-sequence:list" => section::SEQUENCE,
        "amqp:amqp-value:*" => section::VALUE,
        "amqp:footer:map" => section::FOOTER,
        _ => return None,
    })
}

/// `raw` (an encoded message) with the message annotation `key` set to
/// `value`, every other section kept byte for byte: the annotations
/// section is re-encoded (or added after the header and delivery
/// annotations, where AMQP 1.0 puts it).
pub fn with_annotation(raw: &Bytes, key: &str, value: Value) -> Result<Bytes, DecodeError> {
    let mut b = raw.clone();
    // Where the annotations go, and the old section's end if there is one.
    let mut at = 0;
    let mut existing: Option<(usize, Vec<(Value, Value)>)> = None;
    while b.has_remaining() {
        let start = raw.len() - b.remaining();
        let Value::Described(d, v) = Value::decode(&mut b)? else {
            return Err(DecodeError::NotASection);
        };
        let code = match *d {
            Value::Ulong(c) => c,
            Value::Symbol(s) => symbolic_section(&s).ok_or(DecodeError::NotASection)?,
            _ => return Err(DecodeError::NotASection),
        };
        match (code, *v) {
            (section::HEADER | section::DELIVERY_ANNOTATIONS, _) => at = raw.len() - b.remaining(),
            (section::MESSAGE_ANNOTATIONS, Value::Map(map)) => {
                at = start;
                existing = Some((raw.len() - b.remaining(), map));
                break;
            }
            _ => break,
        }
    }
    let (rest_from, mut map) = existing.unwrap_or((at, Vec::new()));
    map.retain(|(k, _)| k.as_str() != Some(key));
    map.push((Value::symbol(key), value));
    let mut out = BytesMut::with_capacity(raw.len() + key.len() + 32);
    out.put_slice(&raw[..at]);
    described(section::MESSAGE_ANNOTATIONS, Value::Map(map)).encode(&mut out);
    out.put_slice(&raw[rest_from..]);
    Ok(out.freeze())
}

fn lookup<'m>(map: &'m [(Value, Value)], key: &str) -> Option<&'m Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_is_added_or_replaced_and_the_rest_kept() {
        let mut m = Message {
            header: Some(vec![Value::Bool(true)]),
            application_properties: vec![(Value::string("region"), Value::string("emea"))],
            body: Body::Data(vec![Bytes::from_static(b"body")]),
            ..Default::default()
        };
        let raw = m.to_bytes();
        let added = with_annotation(&raw, "x-stream-filter-value", Value::string("emea")).unwrap();
        let got = Message::decode(added.clone()).unwrap();
        m.message_annotations = vec![(
            Value::symbol("x-stream-filter-value"),
            Value::string("emea"),
        )];
        assert_eq!(got, m);
        let replaced =
            with_annotation(&added, "x-stream-filter-value", Value::string("apac")).unwrap();
        let got = Message::decode(replaced).unwrap();
        assert_eq!(
            got.annotation("x-stream-filter-value")
                .and_then(Value::as_str),
            Some("apac")
        );
        assert_eq!(got.message_annotations.len(), 1);
        assert_eq!(got.body_bytes(), Bytes::from_static(b"body"));
        assert!(with_annotation(&Bytes::from_static(b"junk"), "k", Value::Null).is_err());
    }

    #[test]
    fn a_message_round_trips() {
        let m = Message {
            header: Some(vec![Value::Bool(true), Value::Ubyte(4)]),
            message_annotations: vec![(Value::symbol("x-exchange"), Value::string("orders"))],
            properties: Properties {
                message_id: Some(Value::string("m-1")),
                content_type: Some("application/json".into()),
                creation_time: Some(1_700_000_000_000),
                ..Properties::default()
            },
            application_properties: vec![
                (Value::string("n"), Value::Long(-300)),
                (Value::string("s"), Value::string("x".repeat(300))),
            ],
            body: Body::Data(vec![Bytes::from(vec![7u8; 1000])]),
        };
        let back = Message::decode(m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.annotation("x-exchange"),
            Some(&Value::string("orders"))
        );
    }

    #[test]
    fn an_amqp_value_body_reads_as_bytes() {
        let m = Message {
            body: Body::Value(Value::string("hello")),
            ..Message::default()
        };
        assert_eq!(
            &Message::decode(m.to_bytes()).unwrap().body_bytes()[..],
            b"hello"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &[0x00u8][..],
            &[0x00, 0x53],
            &[0x00, 0x53, 0x75, 0xb0, 0, 0, 0, 9],
            &[0xd0, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert!(Message::decode(Bytes::copy_from_slice(raw)).is_err());
        }
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x55, 1])),
            Err(DecodeError::NotASection)
        );
    }
}
