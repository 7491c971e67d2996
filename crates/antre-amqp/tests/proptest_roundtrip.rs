//! Property tests of the codec: encode → decode is the identity, decoding
//! arbitrary bytes never panics, and the decoder gives the same frames however
//! the byte stream is cut into reads.

use antre_amqp::codec::Decoder;
use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_content, encode_frame, encode_method, reply, BasicProperties, CodecError,
    ContentHeader, FieldTable, FieldValue, Frame, Method, FRAME_MIN_SIZE,
};
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

/// Short strings: mostly ASCII names, sometimes arbitrary Unicode, always
/// within the 255-byte limit of the wire format.
fn shortstr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._/-]{0,32}",
        1 => "\\PC{0,40}",
        1 => "[a-z]{255}",
    ]
}

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

/// Field values without NaN floats (NaN != NaN would make equality fail for
/// reasons that have nothing to do with the codec). Nesting depth at most 4.
fn field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f32>()
            .prop_filter("no NaN", |v| !v.is_nan())
            .prop_map(FieldValue::F32),
        any::<f64>()
            .prop_filter("no NaN", |v| !v.is_nan())
            .prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        bytes_up_to(64).prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        bytes_up_to(64).prop_map(FieldValue::ByteArray),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(FieldValue::Array),
            table_of(inner).prop_map(FieldValue::Table),
        ]
    })
}

/// Tables are vectors: duplicate keys and any order must survive too.
fn table_of(value: impl Strategy<Value = FieldValue>) -> impl Strategy<Value = FieldTable> {
    vec((shortstr(), value), 0..8).prop_map(FieldTable)
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    table_of(field_value())
}

fn basic_properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(field_table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
        ),
        (
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
        ),
    )
        .prop_map(
            |(
                (
                    content_type,
                    content_encoding,
                    headers,
                    delivery_mode,
                    priority,
                    correlation_id,
                    reply_to,
                ),
                (expiration, message_id, timestamp, kind, user_id, app_id, cluster_id),
            )| BasicProperties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                kind,
                user_id,
                app_id,
                cluster_id,
            },
        )
}

/// A selection of methods covering every field type (octet, short, long,
/// longlong, bit runs of 1 to 5 bits, shortstr, longstr, table) and every
/// class, with the reserved fields randomised too (antre keeps them).
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            field_table(),
            bytes_up_to(32),
            bytes_up_to(32)
        )
            .prop_map(
                |(version_major, version_minor, server_properties, mechanisms, locales)| {
                    ConnectionStart {
                        version_major,
                        version_minor,
                        server_properties,
                        mechanisms,
                        locales,
                    }
                    .into()
                }
            ),
        (field_table(), shortstr(), bytes_up_to(64), shortstr()).prop_map(
            |(client_properties, mechanism, response, locale)| ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            }
            .into()
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| {
                ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                }
                .into()
            }
        ),
        (shortstr(), shortstr(), any::<bool>()).prop_map(|(virtual_host, capabilities, insist)| {
            ConnectionOpen {
                virtual_host,
                capabilities,
                insist,
            }
            .into()
        }),
        (any::<u16>(), shortstr(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| ConnectionClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            }
            .into()
        ),
        shortstr().prop_map(|out_of_band| ChannelOpen { out_of_band }.into()),
        bytes_up_to(16).prop_map(|channel_id| ChannelOpenOk { channel_id }.into()),
        any::<bool>().prop_map(|active| ChannelFlow { active }.into()),
        (
            any::<u16>(),
            shortstr(),
            shortstr(),
            any::<[bool; 5]>(),
            field_table()
        )
            .prop_map(|(ticket, exchange, kind, b, arguments)| ExchangeDeclare {
                ticket,
                exchange,
                kind,
                passive: b[0],
                durable: b[1],
                auto_delete: b[2],
                internal: b[3],
                nowait: b[4],
                arguments,
            }
            .into()),
        (
            any::<u16>(),
            shortstr(),
            shortstr(),
            shortstr(),
            any::<bool>(),
            field_table()
        )
            .prop_map(
                |(ticket, destination, source, routing_key, nowait, arguments)| ExchangeBind {
                    ticket,
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                }
                .into()
            ),
        (any::<u16>(), shortstr(), any::<[bool; 5]>(), field_table()).prop_map(
            |(ticket, queue, b, arguments)| QueueDeclare {
                ticket,
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            }
            .into()
        ),
        (shortstr(), any::<u32>(), any::<u32>()).prop_map(
            |(queue, message_count, consumer_count)| QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            }
            .into()
        ),
        (any::<u16>(), shortstr(), any::<bool>()).prop_map(|(ticket, queue, nowait)| {
            QueuePurge {
                ticket,
                queue,
                nowait,
            }
            .into()
        }),
        (any::<u16>(), shortstr(), any::<[bool; 3]>()).prop_map(|(ticket, queue, b)| {
            QueueDelete {
                ticket,
                queue,
                if_unused: b[0],
                if_empty: b[1],
                nowait: b[2],
            }
            .into()
        }),
        (any::<u32>(), any::<u16>(), any::<bool>()).prop_map(
            |(prefetch_size, prefetch_count, global)| BasicQos {
                prefetch_size,
                prefetch_count,
                global,
            }
            .into()
        ),
        (
            any::<u16>(),
            shortstr(),
            shortstr(),
            any::<[bool; 4]>(),
            field_table()
        )
            .prop_map(|(ticket, queue, consumer_tag, b, arguments)| BasicConsume {
                ticket,
                queue,
                consumer_tag,
                no_local: b[0],
                no_ack: b[1],
                exclusive: b[2],
                nowait: b[3],
                arguments,
            }
            .into()),
        (any::<u16>(), shortstr(), shortstr(), any::<[bool; 2]>()).prop_map(
            |(ticket, exchange, routing_key, b)| BasicPublish {
                ticket,
                exchange,
                routing_key,
                mandatory: b[0],
                immediate: b[1],
            }
            .into()
        ),
        (
            shortstr(),
            any::<u64>(),
            any::<bool>(),
            shortstr(),
            shortstr()
        )
            .prop_map(
                |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| BasicDeliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                }
                .into()
            ),
        (
            any::<u64>(),
            any::<bool>(),
            shortstr(),
            shortstr(),
            any::<u32>()
        )
            .prop_map(
                |(delivery_tag, redelivered, exchange, routing_key, message_count)| BasicGetOk {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    message_count,
                }
                .into()
            ),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| BasicAck {
            delivery_tag,
            multiple
        }
        .into()),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(delivery_tag, multiple, requeue)| BasicNack {
                delivery_tag,
                multiple,
                requeue,
            }
            .into()
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, requeue)| BasicReject {
            delivery_tag,
            requeue
        }
        .into()),
        any::<bool>().prop_map(|nowait| ConfirmSelect { nowait }.into()),
        Just(TxSelect {}.into()),
        Just(TxCommitOk {}.into()),
    ]
}

/// Any frame (the header's class id and body size are free: the codec does
/// not tie them to anything).
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => (any::<u16>(), method()).prop_map(|(channel, method)| Frame::Method { channel, method }),
        2 => (any::<u16>(), any::<u16>(), any::<u64>(), basic_properties()).prop_map(
            |(channel, class_id, body_size, properties)| Frame::Header {
                channel,
                header: ContentHeader {
                    class_id,
                    body_size,
                    properties,
                },
            }
        ),
        2 => (any::<u16>(), bytes_up_to(300))
            .prop_map(|(channel, payload)| Frame::Body { channel, payload }),
        1 => Just(Frame::Heartbeat),
    ]
}

/// Byte strings that look like frames often enough to get past the frame
/// header checks: a valid frame type, a size that matches, the end octet;
/// then random payload, so the method, header and table decoders are reached.
fn frame_shaped_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8), any::<u8>()],
        any::<u16>(),
        vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(kind, channel, payload, good_end)| {
            let mut f = vec![kind];
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(&payload);
            f.push(if good_end { 0xCE } else { 0 });
            f
        })
}

/// Valid encodings of random frames with a few bytes overwritten.
fn mutated_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(frame(), 1..4),
        vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    )
        .prop_map(|(frames, edits)| {
            let mut out = BytesMut::new();
            for f in &frames {
                encode_frame(f, &mut out);
            }
            let mut bytes = out.to_vec();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes
        })
}

fn any_frame_max() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        0u32..16,
        Just(FRAME_MIN_SIZE),
        Just(131_072),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Decodes every frame in `bytes`, asserting the decoder's contract along the
/// way: it never panics, `Ok(None)` consumes nothing, `Ok(Some)` consumes
/// something, and every error maps to a connection-level reply code.
fn decode_until_stuck(bytes: &[u8], frame_max: u32) -> (Vec<Frame>, Option<CodecError>) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(f)) => {
                assert!(buf.len() < before, "a frame was decoded from nothing");
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return (frames, None);
            }
            Err(e) => {
                assert!(
                    [
                        reply::FRAME_ERROR,
                        reply::SYNTAX_ERROR,
                        reply::UNEXPECTED_FRAME,
                        reply::NOT_IMPLEMENTED
                    ]
                    .contains(&e.reply_code()),
                    "{e} maps to {}",
                    e.reply_code()
                );
                return (frames, Some(e));
            }
        }
    }
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        encode_frame(f, &mut out);
    }
    out.to_vec()
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn field_tables_round_trip(table in field_table()) {
        let mut out = BytesMut::new();
        table.encode(&mut out);
        let mut d = Decoder::new(out.freeze(), "table");
        prop_assert_eq!(d.table(), Ok(table));
        prop_assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn basic_properties_round_trip(props in basic_properties()) {
        let mut out = BytesMut::new();
        props.encode(&mut out);
        prop_assert_eq!(BasicProperties::from_bytes(out.freeze()), Ok(props));
    }

    #[test]
    fn methods_round_trip(method in method()) {
        let mut out = BytesMut::new();
        method.encode(&mut out);
        prop_assert_eq!(Method::decode(out.freeze()), Ok(method));
    }

    #[test]
    fn frames_round_trip(frame in frame()) {
        let bytes = encode_all(std::slice::from_ref(&frame));
        let (frames, err) = decode_until_stuck(&bytes, u32::MAX);
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames, vec![frame]);
    }

    #[test]
    fn content_splits_into_frames_that_fit(
        channel in any::<u16>(),
        props in basic_properties(),
        body in vec(any::<u8>(), 0..3000),
        frame_max in prop_oneof![9u32..64, Just(FRAME_MIN_SIZE), Just(0u32)],
    ) {
        let publish: Method = BasicPublish::default().into();
        let mut out = BytesMut::new();
        encode_method(channel, &publish, &mut out);
        encode_content(channel, &props, &body, frame_max, &mut out);
        let (frames, err) = decode_until_stuck(&out, u32::MAX);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&frames[0], &Frame::Method { channel, method: publish });
        prop_assert_eq!(
            &frames[1],
            &Frame::Header {
                channel,
                header: ContentHeader { class_id: 60, body_size: body.len() as u64, properties: props },
            }
        );
        let mut joined = Vec::new();
        for f in &frames[2..] {
            let Frame::Body { channel: c, payload } = f else {
                return Err(TestCaseError::fail(format!("expected a body frame, got {f:?}")));
            };
            prop_assert_eq!(*c, channel);
            prop_assert!(!payload.is_empty(), "empty body frame");
            if frame_max != 0 {
                prop_assert!(payload.len() + 8 <= frame_max as usize);
            }
            joined.extend_from_slice(payload);
        }
        prop_assert_eq!(joined, body);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), frame_max in any_frame_max()) {
        decode_until_stuck(&bytes, frame_max);
    }

    #[test]
    fn frame_shaped_bytes_never_panic(
        chunks in vec(frame_shaped_bytes(), 1..4),
        frame_max in any_frame_max(),
    ) {
        decode_until_stuck(&chunks.concat(), frame_max);
    }

    #[test]
    fn mutated_frames_never_panic_and_reencode(bytes in mutated_frames(), frame_max in any_frame_max()) {
        let (frames, _) = decode_until_stuck(&bytes, frame_max);
        // Whatever decoded, however mangled, is a frame antre can write and
        // read back. (NaN floats can appear here; compare bytes, not values.)
        let once = encode_all(&frames);
        let (again, err) = decode_until_stuck(&once, u32::MAX);
        prop_assert_eq!(err, None);
        prop_assert_eq!(encode_all(&again), once);
    }

    #[test]
    fn stream_cut_anywhere_gives_the_same_frames(
        frames in vec(frame(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();

        // Feed the stream read by read, decoding everything available after
        // each read, like a connection does.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for w in cuts.windows(2) {
            buf.extend_from_slice(&stream[w[0]..w[1]]);
            while let Some(f) = decode_frame(&mut buf, u32::MAX).expect("valid stream") {
                decoded.push(f);
            }
        }
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn stream_fed_byte_by_byte_gives_the_same_frames(frames in vec(frame(), 1..4)) {
        let stream = encode_all(&frames);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for b in &stream {
            buf.extend_from_slice(&[*b]);
            if let Some(f) = decode_frame(&mut buf, u32::MAX).expect("valid stream") {
                decoded.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }
}

#[test]
fn nesting_at_the_limit_decodes_and_beyond_it_fails() {
    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable(vec![("leaf".into(), FieldValue::Void)]);
        for _ in 0..depth {
            t = FieldTable(vec![("t".into(), FieldValue::Table(t))]);
        }
        t
    }
    fn decode(t: &FieldTable) -> Result<FieldTable, CodecError> {
        let mut out = BytesMut::new();
        t.encode(&mut out);
        Decoder::new(out.freeze(), "table").table()
    }
    let limit = antre_amqp::types::MAX_NESTING;
    let ok = nested(limit);
    assert_eq!(decode(&ok), Ok(ok));
    assert_eq!(decode(&nested(limit + 1)), Err(CodecError::TooDeep));
}
