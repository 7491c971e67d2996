//! Errors of the broker core, each mapped to the AMQP reply code the spec
//! names and to whether it closes the channel (soft) or the connection (hard).

use antre_amqp::constants::reply;

/// A client's request that the broker refuses. The `Display` text is the
/// reply text sent to the client, in RabbitMQ's form: `CODE_NAME - details`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// 404: a queue or exchange does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// 406: redeclare with other properties, unknown delivery tag, ...
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// 403: not permitted (default exchange, reserved names, exclusive consumer).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// 405: another connection's exclusive queue.
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// 530 (connection): e.g. reusing a consumer tag, unknown vhost.
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// 503 (connection): e.g. an unknown exchange type.
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// 504 (connection): a method on a channel in the wrong state.
    #[error("CHANNEL_ERROR - {0}")]
    ChannelError(String),
    /// 505 (connection): a frame that was not expected now.
    #[error("UNEXPECTED_FRAME - {0}")]
    UnexpectedFrame(String),
    /// 540 (connection): a feature antre does not implement.
    #[error("NOT_IMPLEMENTED - {0}")]
    NotImplemented(String),
    /// 541 (connection): the broker failed (e.g. the disk).
    #[error("INTERNAL_ERROR - {0}")]
    Internal(String),
}

impl BrokerError {
    /// The details without the reply name: how RabbitMQ's management API
    /// words a refusal of what it does itself (a declare, a bind) rather
    /// than over an AMQP channel.
    pub fn details(&self) -> &str {
        match self {
            BrokerError::NotFound(t)
            | BrokerError::PreconditionFailed(t)
            | BrokerError::AccessRefused(t)
            | BrokerError::ResourceLocked(t)
            | BrokerError::NotAllowed(t)
            | BrokerError::CommandInvalid(t)
            | BrokerError::ChannelError(t)
            | BrokerError::UnexpectedFrame(t)
            | BrokerError::NotImplemented(t)
            | BrokerError::Internal(t) => t,
        }
    }

    /// The reply code for channel.close or connection.close.
    pub fn reply_code(&self) -> u16 {
        match self {
            BrokerError::NotFound(_) => reply::NOT_FOUND,
            BrokerError::PreconditionFailed(_) => reply::PRECONDITION_FAILED,
            BrokerError::AccessRefused(_) => reply::ACCESS_REFUSED,
            BrokerError::ResourceLocked(_) => reply::RESOURCE_LOCKED,
            BrokerError::NotAllowed(_) => reply::NOT_ALLOWED,
            BrokerError::CommandInvalid(_) => reply::COMMAND_INVALID,
            BrokerError::ChannelError(_) => reply::CHANNEL_ERROR,
            BrokerError::UnexpectedFrame(_) => reply::UNEXPECTED_FRAME,
            BrokerError::NotImplemented(_) => reply::NOT_IMPLEMENTED,
            BrokerError::Internal(_) => reply::INTERNAL_ERROR,
        }
    }

    /// Whether the spec makes this a connection exception (hard error)
    /// rather than a channel exception.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            BrokerError::NotAllowed(_)
                | BrokerError::CommandInvalid(_)
                | BrokerError::ChannelError(_)
                | BrokerError::UnexpectedFrame(_)
                | BrokerError::NotImplemented(_)
                | BrokerError::Internal(_)
        )
    }
}

/// `queue 'q' in vhost '/'`, the way RabbitMQ names resources in errors.
pub(crate) fn queue_ref(vhost: &str, name: &str) -> String {
    format!("queue '{name}' in vhost '{vhost}'")
}

/// `exchange 'x' in vhost '/'`.
pub(crate) fn exchange_ref(vhost: &str, name: &str) -> String {
    format!("exchange '{name}' in vhost '{vhost}'")
}
