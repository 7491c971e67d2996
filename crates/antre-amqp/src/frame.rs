//! Frames: the unit of AMQP on the wire.
//!
//! `type:u8 channel:u16 size:u32 payload[size] 0xCE`. The decoder works on
//! the connection's read buffer in place: it returns `Ok(None)` until a whole
//! frame is there, then splits it off without copying, so a connection can
//! parse every frame a single read brought in.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::Decoder;
use crate::constants::*;
use crate::error::CodecError;
use crate::method::Method;
use crate::properties::BasicProperties;

/// The content header that follows a content-carrying method.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Class of the method the content belongs to (60, basic).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The message properties.
    pub properties: BasicProperties,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// The header.
        header: ContentHeader,
    },
    /// A content body frame: a slice of the read buffer.
    Body {
        /// Channel number.
        channel: u16,
        /// Body bytes.
        payload: Bytes,
    },
    /// A heartbeat (always channel 0).
    Heartbeat,
}

impl Frame {
    /// The channel the frame belongs to (0 for heartbeats).
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet (nothing is
/// consumed). `frame_max` is the negotiated maximum frame size including the
/// 8 bytes of framing; a larger frame is an error before its payload arrives,
/// so a peer cannot make the server buffer more than `frame_max` bytes.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(CodecError::UnknownFrameType(kind));
    }
    let total = u64::from(size) + u64::from(FRAME_OVERHEAD);
    if total > u64::from(frame_max) {
        return Err(CodecError::FrameTooLarge {
            size: total,
            max: frame_max,
        });
    }
    let total = total as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(CodecError::BadFrameEnd(end));
    }
    let mut frame = buf.split_to(total);
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    let frame = match kind {
        FRAME_METHOD => Frame::Method {
            channel,
            method: Method::decode(payload)?,
        },
        FRAME_HEADER => {
            let mut d = Decoder::new(payload, "content header");
            let class_id = d.short()?;
            let _weight = d.short()?;
            let body_size = d.longlong()?;
            let properties = BasicProperties::decode(&mut d)?;
            Frame::Header {
                channel,
                header: ContentHeader {
                    class_id,
                    body_size,
                    properties,
                },
            }
        }
        FRAME_BODY => Frame::Body { channel, payload },
        _ => {
            if size != 0 {
                return Err(CodecError::BadHeartbeat);
            }
            if channel != 0 {
                return Err(CodecError::HeartbeatOnChannel(channel));
            }
            Frame::Heartbeat
        }
    };
    Ok(Some(frame))
}

/// Writes the 7-byte frame header, then what `payload` writes, then the
/// frame end, patching the size afterwards so nothing is encoded twice.
fn put_frame(out: &mut BytesMut, kind: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    payload(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: &Method, out: &mut BytesMut) {
    put_frame(out, FRAME_METHOD, channel, |out| method.encode(out));
}

/// Appends a content header frame and the body frames, splitting the body so
/// that no frame exceeds `frame_max` bytes (0 means no limit).
pub fn encode_content(
    channel: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    put_frame(out, FRAME_HEADER, channel, |out| {
        out.put_u16(CLASS_BASIC);
        out.put_u16(0);
        out.put_u64(body.len() as u64);
        properties.encode(out);
    });
    // A frame_max below the overhead is not negotiable, but this function
    // must not panic on any input: it then degrades to one-byte frames.
    let chunk = if frame_max == 0 {
        body.len().max(1)
    } else {
        frame_max.saturating_sub(FRAME_OVERHEAD).max(1) as usize
    };
    for part in body.chunks(chunk) {
        out.reserve(part.len() + FRAME_OVERHEAD as usize);
        put_frame(out, FRAME_BODY, channel, |out| out.put_slice(part));
    }
}

/// Appends any frame.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Method { channel, method } => encode_method(*channel, method, out),
        Frame::Header { channel, header } => put_frame(out, FRAME_HEADER, *channel, |out| {
            out.put_u16(header.class_id);
            out.put_u16(0);
            out.put_u64(header.body_size);
            header.properties.encode(out);
        }),
        Frame::Body { channel, payload } => {
            put_frame(out, FRAME_BODY, *channel, |out| out.put_slice(payload))
        }
        Frame::Heartbeat => put_frame(out, FRAME_HEARTBEAT, 0, |_| {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::{BasicPublish, ChannelOpen};

    const MAX: u32 = 131_072;

    fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, MAX).expect("valid") {
            frames.push(f);
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn publish_with_content_round_trips_and_splits_body() {
        let mut out = BytesMut::new();
        let publish: Method = BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: true,
            ..Default::default()
        }
        .into();
        encode_method(1, &publish, &mut out);
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let body = vec![7u8; 10_000];
        encode_content(1, &props, &body, 4096, &mut out);
        let frames = decode_all(out);
        assert_eq!(frames.len(), 1 + 1 + 3);
        assert_eq!(
            frames[0],
            Frame::Method {
                channel: 1,
                method: publish
            }
        );
        let Frame::Header { header, .. } = &frames[1] else {
            panic!("expected header, got {:?}", frames[1]);
        };
        assert_eq!(header.body_size, 10_000);
        assert_eq!(header.properties, props);
        let mut joined = Vec::new();
        for f in &frames[2..] {
            let Frame::Body { payload, .. } = f else {
                panic!("expected body")
            };
            assert!(payload.len() <= 4096 - 8);
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined, body);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode_method(3, &ChannelOpen::default().into(), &mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_frame(&mut part, MAX), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn heartbeat_round_trips() {
        let mut out = BytesMut::new();
        encode_frame(&Frame::Heartbeat, &mut out);
        assert_eq!(&out[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
        assert_eq!(decode_all(out), vec![Frame::Heartbeat]);
    }

    #[test]
    fn framing_errors_are_frame_errors() {
        let mut bad_end = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        let err = decode_frame(&mut bad_end, MAX).unwrap_err();
        assert_eq!(err, CodecError::BadFrameEnd(0xAB));
        assert_eq!(err.reply_code(), reply::FRAME_ERROR);

        let mut bad_type = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut bad_type, MAX),
            Err(CodecError::UnknownFrameType(9))
        );

        // Too large is known from the header alone: no need to buffer it.
        let mut huge = BytesMut::from(&[3u8, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut huge, MAX),
            Err(CodecError::FrameTooLarge { .. })
        ));

        let mut hb_on_channel = BytesMut::from(&[8u8, 0, 1, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut hb_on_channel, MAX),
            Err(CodecError::HeartbeatOnChannel(1))
        );
        let mut hb_with_payload = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut hb_with_payload, MAX),
            Err(CodecError::BadHeartbeat)
        );
    }
}
