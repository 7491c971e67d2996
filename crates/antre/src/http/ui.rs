//! The web UI, embedded in the binary: one HTML page, one script, one
//! stylesheet, written by hand (no build step). The page logs in with a
//! broker user and calls the same `/api` as scripts do.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const OPENAPI: &str = include_str!("openapi.json");

/// GET /.
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

/// GET /ui/{file}.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (kind, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return ApiError::not_found(format!("no UI file '{file}'")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// GET /api/openapi.json: the API's OpenAPI 3 description.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_description_is_json_and_names_every_api_path() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/overview",
            "/api/queues",
            "/api/queues/{vhost}/{name}",
            "/api/queues/{vhost}/{name}/get",
            "/api/exchanges/{vhost}/{name}/publish",
            "/api/bindings",
            "/api/connections",
            "/api/channels",
            "/api/consumers",
            "/api/vhosts",
            "/api/definitions",
            "/api/users/{name}",
            "/api/permissions/{vhost}/{user}",
            "/api/topic-permissions/{vhost}/{user}",
            "/api/users/{user}/permissions",
            "/api/vhosts/{vhost}/permissions",
            "/api/health/checks/alarms",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} is described");
        }
    }
}
