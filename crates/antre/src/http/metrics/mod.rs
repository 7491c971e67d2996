//! Prometheus metrics in the text format (version 0.0.4), under two sets of
//! names:
//!
//! - [`rabbitmq`]: the rabbitmq_prometheus plugin's names and labels
//!   (`rabbitmq_identity_info`, `rabbitmq_queue_messages_ready`,
//!   `rabbitmq_global_messages_received_total`, ...), so RabbitMQ's Grafana
//!   dashboards and alerts work unchanged;
//! - [`antre`]: antre's own `antre_*` names, with its latency histograms.
//!
//! Like RabbitMQ, `/metrics` aggregates the RabbitMQ-named queue,
//! connection and channel metrics into one series each,
//! `/metrics/per-object` gives one series per object (scrape one of them),
//! and `/metrics/detailed` only the families asked for ([`objects`]).
//! No auth, like RabbitMQ's Prometheus endpoint: bind the HTTP listener to
//! a private address if the numbers are sensitive. docs/operations.md lists
//! every metric.

pub mod antre;
pub mod objects;
pub mod rabbitmq;

use std::fmt::Write;

use antre_broker::metrics::HistogramSnapshot;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::HttpState;

/// The metrics page being written.
#[derive(Debug, Default)]
pub struct Page {
    out: String,
}

impl Page {
    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram, its bucket bounds written by `le`.
    pub fn histogram_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
        le: impl Fn(f64) -> String,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in &h.buckets {
            let le = le(*bound);
            let mut all = labels.to_vec();
            all.push(("le", &le));
            self.sample(&bucket, &all, n);
        }
        let mut all = labels.to_vec();
        all.push(("le", "+Inf"));
        self.sample(&bucket, &all, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    /// A histogram with plainly written bounds.
    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.histogram_with(name, help, &[], h, |b| format!("{b}"));
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Which of RabbitMQ's endpoints a page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/metrics`: queue, connection and channel metrics aggregated.
    Aggregated,
    /// `/metrics/per-object`: one series per queue, connection, channel.
    PerObject,
    /// `/metrics/detailed`: only the requested families, per object.
    Detailed(Detailed),
}

/// What `/metrics/detailed` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detailed {
    /// `family=` values, e.g. `queue_coarse_metrics`.
    pub families: Vec<String>,
    /// `vhost=` values; none means every vhost.
    pub vhosts: Vec<String>,
}

/// Renders every metric of a page.
pub fn render(state: &HttpState, endpoint: &Endpoint) -> String {
    let mut page = Page::default();
    rabbitmq::render(&mut page, state, endpoint);
    if !matches!(endpoint, Endpoint::Detailed(_)) {
        antre::render(&mut page, state);
    }
    page.finish()
}

fn respond(text: String) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// GET /metrics.
pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    respond(render(&state, &Endpoint::Aggregated))
}

/// GET /metrics/per-object.
pub async fn per_object(State(state): State<HttpState>) -> impl IntoResponse {
    respond(render(&state, &Endpoint::PerObject))
}

/// GET /metrics/detailed?family=...&vhost=...: the requested families
/// (queue_coarse_metrics, queue_consumer_count, queue_metrics,
/// connection_coarse_metrics, connection_metrics, channel_metrics, ra_metrics), per
/// object, under `rabbitmq_detailed_` names, as RabbitMQ's.
pub async fn detailed(
    State(state): State<HttpState>,
    Query(query): Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let pick = |key: &str| -> Vec<String> {
        query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let detailed = Detailed {
        families: pick("family"),
        vhosts: pick("vhost"),
    };
    respond(render(&state, &Endpoint::Detailed(detailed)))
}
