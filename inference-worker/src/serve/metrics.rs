//! The worker's Prometheus metrics. Labels are bounded enums (endpoint, status class),
//! never model names, keys or error text.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::AuditCounters;
use crate::backend::supervisor::UpstreamMetrics;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// The trace span name: method and route, as OpenTelemetry's HTTP conventions name spans.
    pub fn span_name(self) -> &'static str {
        match self {
            Endpoint::Chat => "POST /v1/chat/completions",
            Endpoint::Completions => "POST /v1/completions",
            Endpoint::Embeddings => "POST /v1/embeddings",
            Endpoint::Models => "GET /v1/models",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> Self {
        match status {
            0..=399 => StatusClass::Success,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Endpoint,
    pub status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Endpoint,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabels, Histogram>,
    pub time_to_first_token: Histogram,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub in_flight: Gauge,
    pub queued: Gauge,
    pub ready: Gauge,
    pub audit_records: Counter,
    pub audit_failures: Counter,
    pub upstream_up: Gauge,
    pub upstream_restarts: Counter,
    pub upstream_running: Gauge<f64, AtomicU64>,
    pub upstream_waiting: Gauge<f64, AtomicU64>,
    pub upstream_kv_cache_usage: Gauge<f64, AtomicU64>,
    registry: Registry,
}

const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let time_to_first_token = Histogram::new(LATENCY_BUCKETS);
        let mut registry = Registry::with_prefix("taimatsu_worker");
        let m = Self {
            requests,
            duration,
            time_to_first_token,
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            ready: Gauge::default(),
            audit_records: Counter::default(),
            audit_failures: Counter::default(),
            upstream_up: Gauge::default(),
            upstream_restarts: Counter::default(),
            upstream_running: Gauge::default(),
            upstream_waiting: Gauge::default(),
            upstream_kv_cache_usage: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests by endpoint and status class", m.requests.clone());
        registry.register("request_duration_seconds", "Request latency, to the last byte", m.duration.clone());
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated token (streaming)",
            m.time_to_first_token.clone(),
        );
        registry.register("prompt_tokens", "Prompt tokens processed", m.prompt_tokens.clone());
        registry.register("generated_tokens", "Tokens generated", m.generated_tokens.clone());
        registry.register("requests_in_flight", "Requests being served", m.in_flight.clone());
        registry.register("requests_queued", "Requests waiting for a slot", m.queued.clone());
        registry.register(
            "ready",
            "1 when the model is verified and the backend answered its warm-up",
            m.ready.clone(),
        );
        registry.register("audit_records", "Request audit records written", m.audit_records.clone());
        registry.register("audit_write_failures", "Request audit writes that failed", m.audit_failures.clone());
        registry.register("upstream_up", "1 while the vLLM upstream answers its health check", m.upstream_up.clone());
        registry.register("upstream_restarts", "Times the upstream process was restarted", m.upstream_restarts.clone());
        registry.register(
            "upstream_requests_running",
            "Requests running in the upstream (vllm:num_requests_running)",
            m.upstream_running.clone(),
        );
        registry.register(
            "upstream_requests_waiting",
            "Requests waiting in the upstream (vllm:num_requests_waiting)",
            m.upstream_waiting.clone(),
        );
        registry.register(
            "upstream_kv_cache_usage_ratio",
            "KV-cache usage of the upstream, 0 to 1 (vllm:kv_cache_usage_perc)",
            m.upstream_kv_cache_usage.clone(),
        );
        Self { registry, ..m }
    }

    /// The audit writer's counters, shared with this registry.
    pub fn audit_counters(&self) -> AuditCounters {
        AuditCounters { records: self.audit_records.clone(), write_failures: self.audit_failures.clone() }
    }

    /// The supervisor's metrics of the model server, shared with this registry.
    pub fn upstream_metrics(&self) -> UpstreamMetrics {
        UpstreamMetrics {
            up: self.upstream_up.clone(),
            restarts: self.upstream_restarts.clone(),
            running: self.upstream_running.clone(),
            waiting: self.upstream_waiting.clone(),
            kv_cache_usage: self.upstream_kv_cache_usage.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap_or_default();
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
