//! Numbers fixed by the AMQP 0-9-1 specification.

/// The 8 bytes a client sends first: "AMQP", 0, 0, 9, 1.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: 7 of header and 1 frame-end octet.
pub const FRAME_OVERHEAD: u32 = 8;
/// The smallest frame_max a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Class id of the basic class, the one whose methods carry content.
pub const CLASS_BASIC: u16 = 60;

/// Reply codes of the spec, as used in connection.close and channel.close.
pub mod reply {
    /// Success.
    pub const REPLY_SUCCESS: u16 = 200;
    /// Soft: the message was too large or the server cannot take it now.
    pub const CONTENT_TOO_LARGE: u16 = 311;
    /// Soft: a mandatory message could not be routed (RabbitMQ's extension).
    pub const NO_ROUTE: u16 = 312;
    /// Soft: an immediate message had no consumer.
    pub const NO_CONSUMERS: u16 = 313;
    /// Hard: an operator closed the connection.
    pub const CONNECTION_FORCED: u16 = 320;
    /// Hard: the virtual host path is invalid.
    pub const INVALID_PATH: u16 = 402;
    /// Soft: access refused (permissions, exclusive queues).
    pub const ACCESS_REFUSED: u16 = 403;
    /// Soft: the named entity does not exist.
    pub const NOT_FOUND: u16 = 404;
    /// Soft: an exclusive resource is locked by another connection.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Soft: a precondition of the method failed.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Hard: a frame was malformed.
    pub const FRAME_ERROR: u16 = 501;
    /// Hard: a frame had fields with illegal values.
    pub const SYNTAX_ERROR: u16 = 502;
    /// Hard: the method is invalid in this context.
    pub const COMMAND_INVALID: u16 = 503;
    /// Hard: the channel is not open or not in the right state.
    pub const CHANNEL_ERROR: u16 = 504;
    /// Hard: a frame arrived that was not expected in this state.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// Hard: the server ran out of a resource.
    pub const RESOURCE_ERROR: u16 = 506;
    /// Hard: the client tried something the server forbids.
    pub const NOT_ALLOWED: u16 = 530;
    /// Hard: the method is not implemented.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// Hard: the server failed internally.
    pub const INTERNAL_ERROR: u16 = 541;
}
