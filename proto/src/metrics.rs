//! The Prometheus endpoint of the coordinator and the agent (`--metrics-listen ADDR`).
//!
//! `GET /metrics` answers OpenMetrics text (so histograms carry their exemplars: the
//! trace id of an observation, which Grafana links to Jaeger); `GET /healthz` answers
//! `ok` while the process serves, `GET /readyz` `ok` while it is ready (the coordinator:
//! while its store takes commits), 503 otherwise: probes that cannot speak TLS use them. Names follow OpenTelemetry's conventions as Prometheus
//! writes them: `baton_` prefix, the unit as a suffix (`_seconds`), `_total` on counters.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Where `--metrics-listen` without an address serves: the port OpenTelemetry's
/// Prometheus exporter uses, on loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// What a scrape encodes: the registry, whose collectors read live state.
pub struct Scrape {
    pub registry: Registry,
    /// Readiness, when it can be false (otherwise ready while serving).
    pub ready: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on the listener until `shutdown` fires.
pub async fn serve(listener: tokio::net::TcpListener, scrape: Arc<Scrape>, shutdown: CancellationToken) {
    let ready = scrape.ready.clone();
    let app = Router::new()
        .route("/metrics", get(move || metrics(scrape.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.as_ref().is_none_or(|r| *r.borrow());
                async move {
                    if ready { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
                }
            }),
        );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

async fn metrics(scrape: Arc<Scrape>) -> impl IntoResponse {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, &scrape.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}

/// The exemplar of an observation: the trace it belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

impl TraceExemplar {
    /// From a W3C traceparent (`00-TRACEID-SPANID-FLAGS`); none when there is no trace.
    pub fn from_traceparent(traceparent: &str) -> Option<Self> {
        let trace_id = traceparent.split('-').nth(1).filter(|t| t.len() == 32 && *t != "0".repeat(32))?;
        Some(Self { trace_id: trace_id.to_string() })
    }
}

/// A histogram family whose observations carry their trace as exemplar.
pub type ExemplarFamily<L> =
    Family<L, HistogramWithExemplars<TraceExemplar>, fn() -> HistogramWithExemplars<TraceExemplar>>;

/// Buckets for durations from 0.1 ms to ~30 min, doubling (25 buckets).
pub fn seconds_family<L: Clone + std::hash::Hash + Eq>() -> ExemplarFamily<L> {
    Family::new_with_constructor(|| {
        HistogramWithExemplars::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 25))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemplar_comes_from_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceExemplar::from_traceparent(tp).unwrap().trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceExemplar::from_traceparent("").is_none());
        assert!(TraceExemplar::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }
}
