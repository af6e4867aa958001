//! Logs, traces and exported log records for Taimatsu's binaries, set up in one place.
//!
//! - Logs: `tracing` to stderr as JSON (or text), filtered by `RUST_LOG`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
//!   (and `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` not `none`), spans are
//!   exported over OTLP/HTTP — protobuf, or JSON with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`
//!   — to the standard endpoint paths, with the standard headers/timeout variables and
//!   `OTEL_SERVICE_NAME`. W3C `traceparent` headers are honoured ([`extract_parent`]).
//! - Log records: events with the target [`EXPORTED_LOG_TARGET`] (the audit records) are
//!   exported over OTLP when `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` or the generic endpoint is
//!   set, and kept out of the stderr log.
//!
//! Nothing is exported unless configured: an air-gapped cluster sends nothing anywhere.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Events with this target are exported as OpenTelemetry log records, not printed.
pub const EXPORTED_LOG_TARGET: &str = "taimatsu::exported";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Flushes and stops the exporters when dropped (at the end of `main`).
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    logs: Option<SdkLoggerProvider>,
}

impl Telemetry {
    pub fn traces_enabled(&self) -> bool {
        self.traces.is_some()
    }

    pub fn logs_enabled(&self) -> bool {
        self.logs.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.traces.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.logs.take() {
            let _ = p.shutdown();
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn signal_enabled(specific_endpoint: &str, exporter_var: &str) -> bool {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if std::env::var(exporter_var).is_ok_and(|v| v.eq_ignore_ascii_case("none")) {
        return false;
    }
    env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set(specific_endpoint)
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| service.to_owned());
    opentelemetry_sdk::Resource::builder().with_service_name(name).build()
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// Exporter set-up problems are reported on stderr and leave that signal off: telemetry
/// never stops the process from starting.
pub fn init(service: &str, format: LogFormat, default_filter: &str) -> Telemetry {
    let mut problems = Vec::new();
    let traces = signal_enabled("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
        .then(|| opentelemetry_otlp::SpanExporter::builder().with_http().build())
        .and_then(|r| r.map_err(|e| problems.push(format!("OTLP trace exporter: {e}"))).ok())
        .map(|exporter| {
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource(service)).build()
        });
    let logs = signal_enabled("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_LOGS_EXPORTER")
        .then(|| opentelemetry_otlp::LogExporter::builder().with_http().build())
        .and_then(|r| r.map_err(|e| problems.push(format!("OTLP log exporter: {e}"))).ok())
        .map(|exporter| {
            SdkLoggerProvider::builder().with_batch_exporter(exporter).with_resource(resource(service)).build()
        });

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Exported log records (audit) are not repeated on stderr.
    let not_exported = tracing_subscriber::filter::filter_fn(|meta| meta.target() != EXPORTED_LOG_TARGET);
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Json => stderr.json().flatten_event(true).with_filter(not_exported).boxed(),
        LogFormat::Text => stderr.with_filter(not_exported).boxed(),
    };
    let trace_layer = traces.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer("taimatsu")).with_filter(EnvFilter::new(default_filter))
    });
    let log_layer = logs.as_ref().map(|p| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p)
            .with_filter(Targets::new().with_target(EXPORTED_LOG_TARGET, tracing::Level::INFO))
    });
    tracing_subscriber::registry().with(filter).with(stderr).with(trace_layer).with(log_layer).init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    for p in problems {
        tracing::error!(problem = %p, "OpenTelemetry export is off");
    }
    Telemetry { traces, logs }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C `traceparent` (and `tracestate`) of `span`, for a request made on its behalf
/// (the worker's call to vLLM), so the callee's spans join the same trace. Empty when
/// traces are not exported (the span then has no trace context).
pub fn inject_context(span: &tracing::Span) -> http::HeaderMap {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut headers = http::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(&mut headers));
    headers
}

/// Makes `span` a child of the caller's trace when the request carries a W3C `traceparent`.
pub fn extract_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}
