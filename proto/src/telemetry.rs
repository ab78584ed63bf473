//! Logs and traces for the coordinator and agent binaries.
//!
//! Logs go to stderr (filter with `BATON_LOG`, default `info`). Traces are exported over
//! OTLP/gRPC only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise nothing is exported and span
//! creation costs next to nothing. W3C trace context is the propagator.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter alive; dropping it flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn export_enabled() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// Installs the log subscriber and, when configured, the OTLP trace pipeline. Must be
/// called inside the Tokio runtime.
pub fn init(service_name: &'static str) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    let provider = if export_enabled() { build_provider(service_name) } else { None };
    match &provider {
        Some(p) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service_name))
                .with_filter(EnvFilter::new("info,h2=off,tonic=off,hyper=off,tower=off,thirtyfour=off"));
            tracing_subscriber::registry().with(fmt).with(otel).init();
        }
        None => tracing_subscriber::registry().with(fmt).init(),
    }
    match &provider {
        Some(_) => tracing::info!(
            endpoint = %export_endpoint(),
            "exporting spans over OTLP/gRPC (a finished job's spans are sent at once)"
        ),
        None => tracing::info!(
            "span export is off: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317) before starting to send spans to Jaeger"
        ),
    }
    Telemetry { provider }
}

fn export_endpoint() -> String {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_default()
}

/// The exporting provider, for [`flush_spans`].
static PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Sends the spans ended so far now rather than at the next batch (e.g. when a job ends, so
/// its trace is in Jaeger within about a second of its result). Returns at once; a no-op
/// when export is off. Must be called inside the Tokio runtime.
pub fn flush_spans() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        // force_flush blocks until the batch task has exported.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.force_flush() {
                tracing::debug!(error = %e, "flushing spans failed");
            }
        });
    }
}

fn build_provider(service_name: &'static str) -> Option<SdkTracerProvider> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: OTLP trace export disabled: {e}");
            return None;
        }
    };
    let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if std::env::var("OTEL_BSP_SCHEDULE_DELAY").is_err() {
        // Every second rather than the SDK's 5 s, so traces show up while people look.
        batch = batch.with_scheduled_delay(std::time::Duration::from_secs(1));
    }
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch.build())
        .build();
    let host = hostname();
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host),
        ])
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider.clone());
    Some(provider)
}

/// This machine's host name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The W3C trace context (`traceparent`, `tracestate`) of `cx` as a map.
pub fn inject(cx: &Context) -> HashMap<String, String> {
    struct Map<'a>(&'a mut HashMap<String, String>);
    impl Injector for Map<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut Map(&mut map));
    map
}

/// A context whose remote parent is the given W3C trace context.
pub fn extract(fields: &HashMap<String, String>) -> Context {
    struct Map<'a>(&'a HashMap<String, String>);
    impl Extractor for Map<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }
    TraceContextPropagator::new().extract(&Map(fields))
}

/// Resolves on Ctrl-C or SIGTERM: the binaries' signal to shut down gracefully.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}
