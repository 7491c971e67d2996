//! The properties of a basic content header: the message's metadata.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Decoder, Encoder};
use crate::error::CodecError;
use crate::types::FieldTable;

macro_rules! properties {
    ($( $bit:literal $field:ident : $ty:ident => $rust:ty ),* $(,)?) => {
        /// Basic class properties. `None` means the property flag is clear.
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct BasicProperties {
            $(
                #[doc = concat!("The `", stringify!($field), "` property.")]
                pub $field: Option<$rust>,
            )*
        }

        impl BasicProperties {
            /// Decodes property flags and the property list.
            pub fn decode(d: &mut Decoder) -> Result<BasicProperties, CodecError> {
                let flags = d.short()?;
                // Bit 0 would announce a second flags word; basic has only 14
                // properties, so it and bit 1 must be clear.
                if flags & 0b11 != 0 {
                    return Err(CodecError::BadPropertyFlags(flags));
                }
                Ok(BasicProperties {
                    $(
                        $field: if flags & (1 << $bit) != 0 { Some(d.$ty()?) } else { None },
                    )*
                })
            }

            /// Appends property flags and the property list to `out`.
            pub fn encode(&self, out: &mut BytesMut) {
                let mut flags = 0u16;
                $( if self.$field.is_some() { flags |= 1 << $bit; } )*
                out.put_u16(flags);
                let mut e = Encoder::new(out);
                $( if let Some(v) = &self.$field { e.$ty(v); } )*
                e.finish();
            }
        }
    };
}

properties! {
    15 content_type: shortstr => String,
    14 content_encoding: shortstr => String,
    13 headers: table => FieldTable,
    12 delivery_mode: octet => u8,
    11 priority: octet => u8,
    10 correlation_id: shortstr => String,
    9 reply_to: shortstr => String,
    8 expiration: shortstr => String,
    7 message_id: shortstr => String,
    6 timestamp: timestamp => u64,
    5 kind: shortstr => String,
    4 user_id: shortstr => String,
    3 app_id: shortstr => String,
    2 cluster_id: shortstr => String,
}

impl BasicProperties {
    /// Whether the publisher asked for the message to be persisted
    /// (delivery_mode 2).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// Decodes properties from a standalone byte slice (flags first).
    pub fn from_bytes(raw: Bytes) -> Result<BasicProperties, CodecError> {
        BasicProperties::decode(&mut Decoder::new(raw, "content header"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FieldValue;

    #[test]
    fn all_properties_round_trip() {
        let p = BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some([("k", FieldValue::string("v"))].into_iter().collect()),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some("c".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("m-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
        };
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(BasicProperties::from_bytes(out.freeze()), Ok(p));
    }

    #[test]
    fn empty_properties_are_two_zero_bytes() {
        let mut out = BytesMut::new();
        BasicProperties::default().encode(&mut out);
        assert_eq!(&out[..], &[0, 0]);
    }

    #[test]
    fn continuation_flag_is_rejected() {
        let raw = Bytes::from_static(&[0, 1]);
        assert_eq!(
            BasicProperties::from_bytes(raw),
            Err(CodecError::BadPropertyFlags(1))
        );
    }
}
