//! Every method of AMQP 0-9-1 (with RabbitMQ's extensions), generated from
//! one table so that a method's fields, its decoder and its encoder can never
//! disagree.
//!
//! Each row reads: class id, method id, type name, the dotted name the spec
//! uses, and the fields in wire order with their domain types. Consecutive
//! `bit` fields share one octet on the wire; the [`Decoder`] and [`Encoder`]
//! handle that packing, so the table stays a plain transcription of the spec.
//!
//! Fields the spec calls reserved (the old access `ticket`, `reserved_1`) are
//! kept so that re-encoding what a peer sent is exact.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Decoder, Encoder};
use crate::error::CodecError;
use crate::types::FieldTable;

macro_rules! field_type {
    (octet) => {
        u8
    };
    (short) => {
        u16
    };
    (long) => {
        u32
    };
    (longlong) => {
        u64
    };
    (timestamp) => {
        u64
    };
    (bit) => {
        bool
    };
    (shortstr) => {
        String
    };
    (longstr) => {
        Bytes
    };
    (table) => {
        FieldTable
    };
}

macro_rules! methods {
    ($( $class:literal $method:literal $Name:ident $dotted:literal { $( $field:ident : $ty:ident ),* $(,)? } )*) => {
        $(
            #[doc = concat!("The `", $dotted, "` method.")]
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $Name {
                $(
                    #[doc = concat!("The `", stringify!($field), "` field.")]
                    pub $field: field_type!($ty),
                )*
            }

            impl From<$Name> for Method {
                fn from(m: $Name) -> Method {
                    Method::$Name(m)
                }
            }
        )*

        /// A decoded method frame payload.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $(
                #[doc = concat!("`", $dotted, "`")]
                $Name($Name),
            )*
        }

        impl Method {
            /// The (class id, method id) pair that identifies the method on the wire.
            pub fn id(&self) -> (u16, u16) {
                match self {
                    $( Method::$Name(_) => ($class, $method), )*
                }
            }

            /// The spec's dotted name, e.g. `basic.publish`, for logs and errors.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Method::$Name(_) => $dotted, )*
                }
            }

            /// Decodes a method frame's payload (class id, method id, fields).
            pub fn decode(payload: Bytes) -> Result<Method, CodecError> {
                let mut d = Decoder::new(payload, "method");
                let class = d.short()?;
                let method = d.short()?;
                Ok(match (class, method) {
                    $(
                        ($class, $method) => Method::$Name($Name {
                            $( $field: d.$ty()?, )*
                        }),
                    )*
                    _ => return Err(CodecError::UnknownMethod { class, method }),
                })
            }

            /// Appends the method frame's payload to `out`.
            #[allow(unused_variables, unused_mut)]
            pub fn encode(&self, out: &mut BytesMut) {
                match self {
                    $(
                        Method::$Name(m) => {
                            out.put_u16($class);
                            out.put_u16($method);
                            let mut e = Encoder::new(out);
                            $( e.$ty(&m.$field); )*
                            e.finish();
                        }
                    )*
                }
            }
        }
    };
}

methods! {
    10 10 ConnectionStart "connection.start" {
        version_major: octet, version_minor: octet, server_properties: table,
        mechanisms: longstr, locales: longstr,
    }
    10 11 ConnectionStartOk "connection.start-ok" {
        client_properties: table, mechanism: shortstr, response: longstr, locale: shortstr,
    }
    10 20 ConnectionSecure "connection.secure" { challenge: longstr }
    10 21 ConnectionSecureOk "connection.secure-ok" { response: longstr }
    10 30 ConnectionTune "connection.tune" { channel_max: short, frame_max: long, heartbeat: short }
    10 31 ConnectionTuneOk "connection.tune-ok" { channel_max: short, frame_max: long, heartbeat: short }
    10 40 ConnectionOpen "connection.open" { virtual_host: shortstr, capabilities: shortstr, insist: bit }
    10 41 ConnectionOpenOk "connection.open-ok" { known_hosts: shortstr }
    10 50 ConnectionClose "connection.close" {
        reply_code: short, reply_text: shortstr, class_id: short, method_id: short,
    }
    10 51 ConnectionCloseOk "connection.close-ok" {}
    10 60 ConnectionBlocked "connection.blocked" { reason: shortstr }
    10 61 ConnectionUnblocked "connection.unblocked" {}
    10 70 ConnectionUpdateSecret "connection.update-secret" { new_secret: longstr, reason: shortstr }
    10 71 ConnectionUpdateSecretOk "connection.update-secret-ok" {}

    20 10 ChannelOpen "channel.open" { out_of_band: shortstr }
    20 11 ChannelOpenOk "channel.open-ok" { channel_id: longstr }
    20 20 ChannelFlow "channel.flow" { active: bit }
    20 21 ChannelFlowOk "channel.flow-ok" { active: bit }
    20 40 ChannelClose "channel.close" {
        reply_code: short, reply_text: shortstr, class_id: short, method_id: short,
    }
    20 41 ChannelCloseOk "channel.close-ok" {}

    40 10 ExchangeDeclare "exchange.declare" {
        ticket: short, exchange: shortstr, kind: shortstr, passive: bit, durable: bit,
        auto_delete: bit, internal: bit, nowait: bit, arguments: table,
    }
    40 11 ExchangeDeclareOk "exchange.declare-ok" {}
    40 20 ExchangeDelete "exchange.delete" { ticket: short, exchange: shortstr, if_unused: bit, nowait: bit }
    40 21 ExchangeDeleteOk "exchange.delete-ok" {}
    40 30 ExchangeBind "exchange.bind" {
        ticket: short, destination: shortstr, source: shortstr, routing_key: shortstr,
        nowait: bit, arguments: table,
    }
    40 31 ExchangeBindOk "exchange.bind-ok" {}
    40 40 ExchangeUnbind "exchange.unbind" {
        ticket: short, destination: shortstr, source: shortstr, routing_key: shortstr,
        nowait: bit, arguments: table,
    }
    40 51 ExchangeUnbindOk "exchange.unbind-ok" {}

    50 10 QueueDeclare "queue.declare" {
        ticket: short, queue: shortstr, passive: bit, durable: bit, exclusive: bit,
        auto_delete: bit, nowait: bit, arguments: table,
    }
    50 11 QueueDeclareOk "queue.declare-ok" { queue: shortstr, message_count: long, consumer_count: long }
    50 20 QueueBind "queue.bind" {
        ticket: short, queue: shortstr, exchange: shortstr, routing_key: shortstr,
        nowait: bit, arguments: table,
    }
    50 21 QueueBindOk "queue.bind-ok" {}
    50 30 QueuePurge "queue.purge" { ticket: short, queue: shortstr, nowait: bit }
    50 31 QueuePurgeOk "queue.purge-ok" { message_count: long }
    50 40 QueueDelete "queue.delete" {
        ticket: short, queue: shortstr, if_unused: bit, if_empty: bit, nowait: bit,
    }
    50 41 QueueDeleteOk "queue.delete-ok" { message_count: long }
    50 50 QueueUnbind "queue.unbind" {
        ticket: short, queue: shortstr, exchange: shortstr, routing_key: shortstr, arguments: table,
    }
    50 51 QueueUnbindOk "queue.unbind-ok" {}

    60 10 BasicQos "basic.qos" { prefetch_size: long, prefetch_count: short, global: bit }
    60 11 BasicQosOk "basic.qos-ok" {}
    60 20 BasicConsume "basic.consume" {
        ticket: short, queue: shortstr, consumer_tag: shortstr, no_local: bit, no_ack: bit,
        exclusive: bit, nowait: bit, arguments: table,
    }
    60 21 BasicConsumeOk "basic.consume-ok" { consumer_tag: shortstr }
    60 30 BasicCancel "basic.cancel" { consumer_tag: shortstr, nowait: bit }
    60 31 BasicCancelOk "basic.cancel-ok" { consumer_tag: shortstr }
    60 40 BasicPublish "basic.publish" {
        ticket: short, exchange: shortstr, routing_key: shortstr, mandatory: bit, immediate: bit,
    }
    60 50 BasicReturn "basic.return" {
        reply_code: short, reply_text: shortstr, exchange: shortstr, routing_key: shortstr,
    }
    60 60 BasicDeliver "basic.deliver" {
        consumer_tag: shortstr, delivery_tag: longlong, redelivered: bit, exchange: shortstr,
        routing_key: shortstr,
    }
    60 70 BasicGet "basic.get" { ticket: short, queue: shortstr, no_ack: bit }
    60 71 BasicGetOk "basic.get-ok" {
        delivery_tag: longlong, redelivered: bit, exchange: shortstr, routing_key: shortstr,
        message_count: long,
    }
    60 72 BasicGetEmpty "basic.get-empty" { cluster_id: shortstr }
    60 80 BasicAck "basic.ack" { delivery_tag: longlong, multiple: bit }
    60 90 BasicReject "basic.reject" { delivery_tag: longlong, requeue: bit }
    60 100 BasicRecoverAsync "basic.recover-async" { requeue: bit }
    60 110 BasicRecover "basic.recover" { requeue: bit }
    60 111 BasicRecoverOk "basic.recover-ok" {}
    60 120 BasicNack "basic.nack" { delivery_tag: longlong, multiple: bit, requeue: bit }

    85 10 ConfirmSelect "confirm.select" { nowait: bit }
    85 11 ConfirmSelectOk "confirm.select-ok" {}

    90 10 TxSelect "tx.select" {}
    90 11 TxSelectOk "tx.select-ok" {}
    90 20 TxCommit "tx.commit" {}
    90 21 TxCommitOk "tx.commit-ok" {}
    90 30 TxRollback "tx.rollback" {}
    90 31 TxRollbackOk "tx.rollback-ok" {}
}

impl Method {
    /// Whether a content header and body frames follow this method.
    pub fn carries_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FieldValue;

    fn round_trip(m: Method) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(Method::decode(out.freeze()).expect("decodes"), m);
    }

    #[test]
    fn methods_round_trip() {
        let args: FieldTable = [("x-max-length", FieldValue::I32(10))]
            .into_iter()
            .collect();
        round_trip(
            QueueDeclare {
                queue: "orders".into(),
                durable: true,
                auto_delete: true,
                arguments: args.clone(),
                ..Default::default()
            }
            .into(),
        );
        round_trip(
            BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: u64::MAX,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "a.b".into(),
            }
            .into(),
        );
        round_trip(
            BasicNack {
                delivery_tag: 7,
                multiple: false,
                requeue: true,
            }
            .into(),
        );
        round_trip(TxCommitOk {}.into());
        round_trip(
            ExchangeDeclare {
                exchange: "e".into(),
                kind: "topic".into(),
                internal: true,
                nowait: true,
                arguments: args,
                ..Default::default()
            }
            .into(),
        );
    }

    #[test]
    fn bits_pack_into_one_octet() {
        let mut out = BytesMut::new();
        Method::from(BasicNack {
            delivery_tag: 1,
            multiple: true,
            requeue: true,
        })
        .encode(&mut out);
        // class, method, tag, then one octet holding both bits.
        assert_eq!(out.len(), 2 + 2 + 8 + 1);
        assert_eq!(out[12], 0b11);
    }

    #[test]
    fn unknown_and_truncated_methods_are_errors() {
        let unknown = Bytes::from_static(&[0, 99, 0, 1]);
        assert_eq!(
            Method::decode(unknown),
            Err(CodecError::UnknownMethod {
                class: 99,
                method: 1
            })
        );
        let truncated = Bytes::from_static(&[0, 60, 0, 80, 0, 0]);
        assert!(matches!(
            Method::decode(truncated),
            Err(CodecError::Truncated(_))
        ));
    }
}
