//! The web UI, embedded in the binary: one HTML page, a stylesheet and a
//! script split into ES modules, written by hand (no build step, no
//! dependencies). The page logs in with a broker user and calls the same
//! `/api` as scripts do.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const OPENAPI: &str = include_str!("openapi.json");

/// The UI's files: the stylesheet and the script's ES modules.
const ASSETS: &[(&str, &str)] = &[
    ("app.css", include_str!("ui/app.css")),
    ("app.js", include_str!("ui/app.js")),
    ("dom.js", include_str!("ui/dom.js")),
    ("table.js", include_str!("ui/table.js")),
    ("chart.js", include_str!("ui/chart.js")),
    ("args.js", include_str!("ui/args.js")),
    ("overview.js", include_str!("ui/overview.js")),
    ("queues.js", include_str!("ui/queues.js")),
    ("exchanges.js", include_str!("ui/exchanges.js")),
    ("connections.js", include_str!("ui/connections.js")),
    ("admin.js", include_str!("ui/admin.js")),
    ("definitions.js", include_str!("ui/definitions.js")),
];

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
    let Some((_, body)) = ASSETS.iter().find(|(name, _)| *name == file) else {
        return ApiError::not_found(format!("no UI file '{file}'")).into_response();
    };
    let kind = if file.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
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
    fn every_module_the_script_imports_is_served() {
        for (name, body) in super::ASSETS {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let target = line
                    .split("from \"./")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| panic!("{name}: unexpected import {line}"));
                assert!(
                    super::ASSETS.iter().any(|(n, _)| *n == target),
                    "{name} imports {target}, which /ui/ does not serve"
                );
            }
        }
        assert!(super::INDEX.contains("src=\"/ui/app.js\""));
    }

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
            "/api/policies",
            "/api/policies/{vhost}/{name}",
            "/api/operator-policies/{vhost}/{name}",
            "/api/health/checks/alarms",
            "/api/health/checks/port-listener/{port}",
            "/api/health/checks/protocol-listener/{protocols}",
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            "/api/health/checks/ready-to-serve-clients",
            "/api/cluster/members",
            "/api/cluster/members/{node}",
            "/api/queues/{vhost}/{name}/members",
            "/api/health/checks/node-is-quorum-critical",
            "/api/maintenance/drain",
            "/api/maintenance/revive",
            "/api/queues/{vhost}/{name}/members/{node}",
            "/api/cluster/queues/grow/{node}",
            "/api/cluster/queues/shrink/{node}",
            "/api/rebalance/queues",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} is described");
        }
    }
}
