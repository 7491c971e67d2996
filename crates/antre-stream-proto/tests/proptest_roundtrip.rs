//! Round trips and robustness: every value and chunk the encoders write
//! decodes back to itself, and no input makes a decoder panic.

use antre_stream_proto::amqp10::{Body, Message, Properties, Value};
use antre_stream_proto::chunk::{Chunk, ChunkBuilder, ChunkHeader};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::Ubyte),
        any::<u16>().prop_map(Value::Ushort),
        any::<u32>().prop_map(Value::Uint),
        any::<u64>().prop_map(Value::Ulong),
        any::<i8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::Short),
        any::<i32>().prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        any::<i64>().prop_map(Value::Timestamp),
        any::<[u8; 16]>().prop_map(Value::Uuid),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|v| Value::Binary(Bytes::from(v))),
        ".{0,40}".prop_map(Value::String),
        "[a-z-]{0,300}".prop_map(Value::Symbol),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            proptest::collection::vec(any::<i64>(), 1..5)
                .prop_map(|v| Value::Array(v.into_iter().map(Value::Long).collect())),
            (any::<u8>(), inner).prop_map(|(d, v)| Value::Described(
                Box::new(Value::Ulong(u64::from(d) + 0x100)),
                Box::new(v)
            )),
        ]
    })
}

proptest! {
    #[test]
    fn values_round_trip(v in value()) {
        let mut out = BytesMut::new();
        v.encode(&mut out);
        let mut raw = out.freeze();
        prop_assert_eq!(Value::decode(&mut raw).unwrap(), v);
        prop_assert!(raw.is_empty());
    }

    #[test]
    fn messages_round_trip(
        annotations in proptest::collection::vec(("[a-z-]{1,20}", scalar()), 0..4),
        app in proptest::collection::vec((".{0,20}", scalar()), 0..4),
        message_id in proptest::option::of(".{0,20}"),
        body in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let m = Message {
            header: None,
            message_annotations: annotations.into_iter().map(|(k, v)| (Value::Symbol(k), v)).collect(),
            properties: Properties { message_id: message_id.map(Value::String), ..Properties::default() },
            application_properties: app.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
            body: Body::Data(vec![Bytes::from(body)]),
        };
        prop_assert_eq!(Message::decode(m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn chunks_round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..40), id in 0u64..1 << 40) {
        let mut b = ChunkBuilder::new();
        for r in &records {
            b.push_simple(r);
        }
        let (h, raw) = b.finish(id, 5, 1);
        let c = Chunk::decode(raw).unwrap();
        prop_assert_eq!(c.header, h);
        let got: Vec<Vec<u8>> = c.records().unwrap().into_iter().map(|(_, r)| r.to_vec()).collect();
        prop_assert_eq!(got, records);
    }

    #[test]
    fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let b = Bytes::from(raw);
        let _ = Message::decode(b.clone());
        let _ = Value::decode(&mut b.clone());
        let _ = ChunkHeader::decode(&b);
        if let Ok(c) = Chunk::decode(b) {
            let _ = c.records();
        }
    }
}
