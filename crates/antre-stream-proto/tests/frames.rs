//! Stream protocol frames: every frame the encoders write decodes back to
//! itself, and no input makes a decoder panic.

use antre_stream_proto::frame::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn s() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn props() -> impl Strategy<Value = Properties> {
    proptest::collection::vec((s(), s()), 0..3)
}

fn offset() -> impl Strategy<Value = OffsetSpecification> {
    prop_oneof![
        Just(OffsetSpecification::First),
        Just(OffsetSpecification::Last),
        Just(OffsetSpecification::Next),
        any::<u64>().prop_map(OffsetSpecification::Offset),
        any::<i64>().prop_map(OffsetSpecification::Timestamp),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), props())
            .prop_map(|(corr, properties)| Request::PeerProperties { corr, properties }),
        (
            any::<u32>(),
            s(),
            proptest::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(corr, mechanism, d)| Request::SaslAuthenticate {
                corr,
                mechanism,
                data: Bytes::from(d)
            }),
        (any::<u32>(), any::<u32>()).prop_map(|(frame_max, heartbeat)| Request::Tune {
            frame_max,
            heartbeat
        }),
        (any::<u32>(), s()).prop_map(|(corr, vhost)| Request::Open { corr, vhost }),
        (
            any::<u32>(),
            any::<u8>(),
            proptest::option::of("[a-z]{1,8}"),
            s()
        )
            .prop_map(|(corr, publisher_id, reference, stream)| {
                Request::DeclarePublisher {
                    corr,
                    publisher_id,
                    reference,
                    stream,
                }
            }),
        (
            1u16..=2,
            any::<u8>(),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    proptest::option::of(s()),
                    proptest::collection::vec(any::<u8>(), 0..30)
                ),
                0..4
            )
        )
            .prop_map(|(version, publisher_id, ms)| Request::Publish {
                version,
                publisher_id,
                messages: ms
                    .into_iter()
                    .map(|(publishing_id, f, m)| PublishedMessage {
                        publishing_id,
                        filter_value: if version >= 2 { f } else { None },
                        message: Bytes::from(m),
                    })
                    .collect(),
            }),
        (
            any::<u32>(),
            any::<u8>(),
            s(),
            offset(),
            any::<u16>(),
            props()
        )
            .prop_map(
                |(corr, subscription_id, stream, offset, credit, properties)| Request::Subscribe {
                    corr,
                    subscription_id,
                    stream,
                    offset,
                    credit,
                    properties
                }
            ),
        (s(), s(), any::<u64>()).prop_map(|(reference, stream, offset)| Request::StoreOffset {
            reference,
            stream,
            offset
        }),
        (any::<u32>(), proptest::collection::vec(s(), 0..4))
            .prop_map(|(corr, streams)| Request::Metadata { corr, streams }),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u16>()), 0..4)
        )
            .prop_map(|(corr, commands)| Request::ExchangeCommandVersions { corr, commands }),
        (
            any::<u32>(),
            s(),
            proptest::collection::vec(s(), 0..3),
            proptest::collection::vec(s(), 0..3),
            props()
        )
            .prop_map(|(corr, name, partitions, binding_keys, arguments)| {
                Request::CreateSuperStream {
                    corr,
                    name,
                    partitions,
                    binding_keys,
                    arguments,
                }
            }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (1u16..0x1f, any::<u32>(), any::<u16>())
            .prop_filter("keys with their own shape", |(k, _, _)| ![
                key::PEER_PROPERTIES,
                key::SASL_HANDSHAKE,
                key::OPEN,
                key::QUERY_PUBLISHER_SEQUENCE,
                key::QUERY_OFFSET,
                key::ROUTE,
                key::PARTITIONS,
                key::EXCHANGE_COMMAND_VERSIONS,
                key::STREAM_STATS,
                key::METADATA,
                key::CREDIT
            ]
            .contains(k))
            .prop_map(|(key, corr, code)| ServerFrame::Response { key, corr, code }),
        (any::<u32>(), any::<u16>(), props()).prop_map(|(corr, code, properties)| {
            ServerFrame::OpenResponse {
                corr,
                code,
                properties,
            }
        }),
        (any::<u8>(), proptest::collection::vec(any::<u64>(), 0..5))
            .prop_map(|(publisher_id, ids)| ServerFrame::PublishConfirm { publisher_id, ids }),
        (
            any::<u8>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(any::<u8>(), 0..60)
        )
            .prop_map(|(subscription_id, committed, c)| ServerFrame::Deliver {
                subscription_id,
                committed,
                chunk: Bytes::from(c)
            }),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u16>(), s(), any::<u32>()), 0..3),
            proptest::collection::vec(
                (
                    s(),
                    any::<u16>(),
                    any::<u16>(),
                    proptest::collection::vec(any::<u16>(), 0..3)
                ),
                0..3
            )
        )
            .prop_map(|(corr, brokers, streams)| ServerFrame::MetadataResponse {
                corr,
                brokers,
                streams: streams
                    .into_iter()
                    .map(|(name, code, leader, replicas)| StreamMetadata {
                        name,
                        code,
                        leader,
                        replicas
                    })
                    .collect(),
            }),
        (
            any::<u32>(),
            any::<u16>(),
            proptest::collection::vec((s(), any::<i64>()), 0..3)
        )
            .prop_map(|(corr, code, stats)| ServerFrame::StreamStatsResponse {
                corr,
                code,
                stats
            }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        let frame = split_frame(&mut out, 0).unwrap().unwrap();
        prop_assert!(out.is_empty());
        prop_assert_eq!(Request::decode(frame).unwrap(), req);
    }

    #[test]
    fn server_frames_round_trip(f in server_frame()) {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let frame = split_frame(&mut out, 0).unwrap().unwrap();
        prop_assert_eq!(ServerFrame::decode(frame).unwrap(), f);
    }

    #[test]
    fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = Request::decode(Bytes::from(raw.clone()));
        let _ = ServerFrame::decode(Bytes::from(raw.clone()));
        let mut buf = BytesMut::from(&raw[..]);
        let _ = split_frame(&mut buf, 1000);
    }
}

#[test]
fn a_frame_over_frame_max_is_refused_before_it_arrives() {
    let mut buf = BytesMut::from(&[0u8, 1, 0, 0][..]);
    assert_eq!(
        split_frame(&mut buf, 1000),
        Err(FrameError::TooLarge {
            size: 65536,
            max: 1000
        })
    );
}

/// Publish version 2 as the clients write it: each message's publishing id
/// is followed by its filter value (a nullable string) before the message.
#[test]
fn publish_v2_carries_a_filter_value_per_message() {
    let mut raw = vec![0x00, 0x02, 0x00, 0x02, 7, 0, 0, 0, 2];
    raw.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    raw.extend_from_slice(&[0, 4]);
    raw.extend_from_slice(b"emea");
    raw.extend_from_slice(&[0, 0, 0, 2]);
    raw.extend_from_slice(b"m1");
    raw.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
    raw.extend_from_slice(&[0xff, 0xff]); // null: no filter value
    raw.extend_from_slice(&[0, 0, 0, 2]);
    raw.extend_from_slice(b"m2");
    let req = Request::decode(Bytes::from(raw)).expect("decodes");
    let Request::Publish {
        version,
        publisher_id,
        messages,
    } = req
    else {
        panic!("not a publish: {req:?}");
    };
    assert_eq!((version, publisher_id), (2, 7));
    let got: Vec<_> = messages
        .iter()
        .map(|m| (m.publishing_id, m.filter_value.as_deref(), &m.message[..]))
        .collect();
    assert_eq!(got, [(1, Some("emea"), &b"m1"[..]), (2, None, &b"m2"[..])]);
}
