//! Errors of the management API: JSON `{"error": ..., "reason": ...}` with
//! the status code RabbitMQ's management plugin uses for the same failure.

use antre_broker::cluster::MetaError;
use antre_broker::BrokerError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short machine-readable kind, e.g. `not_found`.
    pub error: &'static str,
    /// What went wrong and, where it helps, what to do.
    pub reason: String,
}

impl ApiError {
    /// 400: the request is malformed or asks for something impossible.
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// 401: no or wrong credentials.
    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: reason.into(),
        }
    }

    /// 404: no such object.
    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: reason.into(),
        }
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed() -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "method_not_allowed",
            reason: "this path does not support this HTTP method; see /api/openapi.json".into(),
        }
    }

    /// 503: a health check failed.
    pub fn unavailable(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "service_unavailable",
            reason: reason.into(),
        }
    }

    /// The error another cluster member's API answered with (its status
    /// and reason), as this node's.
    pub fn from_status(status: u16, reason: String) -> ApiError {
        match status {
            400 => ApiError::bad_request(reason),
            401 => crate::http::auth::not_authorised(&reason),
            404 => ApiError::not_found(reason),
            503 => ApiError::unavailable(reason),
            _ => ApiError::internal(reason),
        }
    }

    /// 500: the broker failed.
    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_error",
            reason: reason.into(),
        }
    }
}

impl ApiError {
    /// A refusal of a declare or bind the API makes itself, as RabbitMQ's
    /// API words it (checked against 3.10): the details without the AMQP
    /// reply name, and `bad_request` for a failed precondition (an
    /// inequivalent redeclare, an invalid argument). What RabbitMQ's API
    /// does over an AMQP channel (a get, a publish) keeps the reply name.
    pub fn direct(e: BrokerError) -> ApiError {
        let mut api = ApiError::from(e.clone());
        if matches!(e, BrokerError::PreconditionFailed(_)) {
            api.error = "bad_request";
        }
        api.reason = e.details().to_owned();
        api
    }

    /// A refusal of what RabbitMQ's API does over an AMQP channel (a get,
    /// a publish): 400 with the channel error's code and text, as it
    /// answers (`404 NOT_FOUND - no exchange ...`).
    pub fn over_channel(e: &BrokerError) -> ApiError {
        ApiError::bad_request(format!("{} {e}", e.reply_code()))
    }

    /// [`ApiError::direct`] for a metadata change's refusal.
    pub fn direct_meta(e: MetaError) -> ApiError {
        match e {
            MetaError::Broker(e) => ApiError::direct(e),
            other => other.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let (status, error) = match &e {
            BrokerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            BrokerError::PreconditionFailed(_) => (StatusCode::BAD_REQUEST, "precondition_failed"),
            // RabbitMQ 3.10's API answers every refusal of a reserved or
            // built-in name (deleting amq.topic, declaring amq.x, binding
            // the default exchange) 401 not_authorised, as it does a
            // missing permission; the reason stays antre's, which says
            // what was refused where RabbitMQ says "Access refused.".
            BrokerError::AccessRefused(_) => (StatusCode::UNAUTHORIZED, "not_authorised"),
            BrokerError::ResourceLocked(_) => (StatusCode::CONFLICT, "resource_locked"),
            BrokerError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            BrokerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError {
            status,
            error,
            reason: e.to_string(),
        }
    }
}

impl From<MetaError> for ApiError {
    /// A refusal as a single node answers it; a cluster that could not
    /// commit the change in time is 503 with the reason.
    fn from(e: MetaError) -> ApiError {
        match e {
            MetaError::Broker(e) => e.into(),
            MetaError::Access(e) => crate::http::api::users::access_error(e),
            MetaError::Unavailable(reason) => ApiError::unavailable(reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "reason": self.reason });
        (self.status, Json(body)).into_response()
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
