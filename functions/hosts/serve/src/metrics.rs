//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format (`prometheus-client`).
//!
//! - `coldpath_serve_requests_total{route,status}`: HTTP requests answered;
//! - `coldpath_serve_request_duration_seconds{route}`: their latency;
//! - `coldpath_serve_queue_depth{model}`: requests waiting for each model, read at scrape time;
//! - `coldpath_serve_batch_requests{model}` and `coldpath_serve_batch_items{model}`: requests
//!   and items (texts, photos) per batch run;
//! - `coldpath_serve_queue_wait_seconds{model}`: time from admission to batching;
//! - `coldpath_serve_rejected_total{model,reason}`: requests that never ran (`queue_full`,
//!   `deadline`, `cancelled` when the client went away);
//! - `coldpath_serve_connections`: open client connections;
//! - `coldpath_serve_connections_refused_total`: connections closed at once because
//!   `COLDPATH_SERVE_MAX_CONNECTIONS` were open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejection {
    model: String,
    reason: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// 1 to 1024, doubling.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// The process's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RouteStatus, Counter>,
    latency: Histograms<Route>,
    depth: Family<Model, Gauge>,
    batch_requests: Histograms<Model>,
    batch_items: Histograms<Model>,
    queue_wait: Histograms<Model>,
    rejected: Family<Rejection, Counter>,
    connections: Gauge,
    connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            depth: Family::default(),
            batch_requests: Family::new_with_constructor(size_histogram),
            batch_items: Family::new_with_constructor(size_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "coldpath_serve_requests",
                "HTTP requests answered, by route and status",
                m.requests.clone(),
            );
            r.register(
                "coldpath_serve_request_duration_seconds",
                "HTTP request latency, by route",
                m.latency.clone(),
            );
            r.register(
                "coldpath_serve_queue_depth",
                "Requests waiting for each model",
                m.depth.clone(),
            );
            r.register(
                "coldpath_serve_batch_requests",
                "Requests per batch run",
                m.batch_requests.clone(),
            );
            r.register(
                "coldpath_serve_batch_items",
                "Items (texts, photos) per batch run",
                m.batch_items.clone(),
            );
            r.register(
                "coldpath_serve_queue_wait_seconds",
                "Time from admission to batching",
                m.queue_wait.clone(),
            );
            r.register(
                "coldpath_serve_rejected",
                "Requests that never ran, by model and reason",
                m.rejected.clone(),
            );
            r.register(
                "coldpath_serve_connections",
                "Open client connections",
                m.connections.clone(),
            );
            r.register(
                "coldpath_serve_connections_refused",
                "Connections closed at once because the connection limit was reached",
                m.connections_refused.clone(),
            );
        }
        m
    }

    /// Records one answered HTTP request under its matched route (or `unmatched`).
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A connection was accepted (`true`) or has closed (`false`).
    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// A connection was closed at once: the limit was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// The handle a model's batcher records through.
    pub fn model(&self, model: &'static str) -> ModelMetrics {
        ModelMetrics {
            model,
            metrics: self.clone(),
        }
    }

    /// The text exposition, with each model's queue depth as given.
    pub fn encode(&self, depths: &[(&str, usize)]) -> String {
        for (model, depth) in depths {
            self.depth
                .get_or_create(&Model {
                    model: (*model).to_string(),
                })
                .set(i64::try_from(*depth).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// One model's batching metrics.
#[derive(Clone)]
pub struct ModelMetrics {
    model: &'static str,
    metrics: Metrics,
}

impl ModelMetrics {
    fn label(&self) -> Model {
        Model {
            model: self.model.to_string(),
        }
    }

    pub fn batch(&self, requests: usize, items: usize) {
        let m = &self.metrics;
        m.batch_requests
            .get_or_create(&self.label())
            .observe(requests as f64);
        m.batch_items
            .get_or_create(&self.label())
            .observe(items as f64);
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.metrics
            .queue_wait
            .get_or_create(&self.label())
            .observe(waited.as_secs_f64());
    }

    pub fn rejected(&self, reason: &str) {
        self.metrics
            .rejected
            .get_or_create(&Rejection {
                model: self.model.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        m.request("/v1/embeddings", 200, Duration::from_millis(3));
        m.request("/v1/embeddings", 200, Duration::from_millis(5));
        m.request("/v1/embeddings", 429, Duration::from_micros(50));
        let e = m.model("embeddings");
        e.batch(3, 40);
        e.queue_wait(Duration::from_millis(2));
        e.rejected("queue_full");
        let text = m.encode(&[("embeddings", 7)]);
        for line in [
            r#"coldpath_serve_requests_total{route="/v1/embeddings",status="200"} 2"#,
            r#"coldpath_serve_requests_total{route="/v1/embeddings",status="429"} 1"#,
            r#"coldpath_serve_request_duration_seconds_count{route="/v1/embeddings"} 3"#,
            r#"coldpath_serve_queue_depth{model="embeddings"} 7"#,
            r#"coldpath_serve_batch_requests_sum{model="embeddings"} 3.0"#,
            r#"coldpath_serve_batch_items_sum{model="embeddings"} 40.0"#,
            r#"coldpath_serve_queue_wait_seconds_count{model="embeddings"} 1"#,
            r#"coldpath_serve_rejected_total{model="embeddings",reason="queue_full"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
