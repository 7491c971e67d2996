//! The ways bytes from a peer can fail to be AMQP.

use crate::constants::reply;

/// Why a frame or a method could not be decoded. Each variant maps to the
/// connection-level reply code the spec prescribes via [`CodecError::reply_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame's last octet was not 0xCE.
    #[error("frame end octet missing (got {0:#04x})")]
    BadFrameEnd(u8),
    /// The frame type octet is not one of 1, 2, 3, 8.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A frame larger than the negotiated frame_max.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge {
        /// Total frame size the peer announced.
        size: u64,
        /// The negotiated limit.
        max: u32,
    },
    /// A heartbeat frame with a payload.
    #[error("malformed heartbeat frame")]
    BadHeartbeat,
    /// A heartbeat frame on a channel other than 0: a well-formed frame in
    /// the wrong place, so 505 as in RabbitMQ rather than a frame error.
    #[error("heartbeat frame on channel {0}")]
    HeartbeatOnChannel(u16),
    /// A method, header or table ended before all its fields were read.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A short string was not UTF-8.
    #[error("short string is not valid UTF-8")]
    InvalidUtf8,
    /// A field table used a value type tag this codec does not know.
    #[error("unknown field value type {0:?}")]
    UnknownFieldType(char),
    /// Field tables nested deeper than the codec allows (a stack guard).
    #[error("field tables nested too deep")]
    TooDeep,
    /// A method frame named a class and method that do not exist.
    #[error("unknown method {class}.{method}")]
    UnknownMethod {
        /// Class id.
        class: u16,
        /// Method id.
        method: u16,
    },
    /// A content header's property flags used bits the class does not define.
    #[error("invalid property flags {0:#06x}")]
    BadPropertyFlags(u16),
}

impl CodecError {
    /// The reply code to close the connection with when this error happens.
    pub fn reply_code(&self) -> u16 {
        match self {
            CodecError::BadFrameEnd(_)
            | CodecError::UnknownFrameType(_)
            | CodecError::FrameTooLarge { .. }
            | CodecError::BadHeartbeat => reply::FRAME_ERROR,
            CodecError::HeartbeatOnChannel(_) => reply::UNEXPECTED_FRAME,
            CodecError::UnknownMethod { .. } => reply::NOT_IMPLEMENTED,
            CodecError::Truncated(_)
            | CodecError::InvalidUtf8
            | CodecError::UnknownFieldType(_)
            | CodecError::TooDeep
            | CodecError::BadPropertyFlags(_) => reply::SYNTAX_ERROR,
        }
    }
}
