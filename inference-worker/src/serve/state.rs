//! Everything a request handler needs, shared behind an `Arc`.

use std::sync::Arc;
use std::time::Duration;

use super::admission::Admission;
use super::auth::Auth;
use super::metrics::Metrics;
use crate::api::validate::RequestLimits;
use crate::audit::{AuditLevel, AuditLog, RefusedRequests};
use crate::backend::{Backend, Readiness};

pub struct AppState {
    pub served_model: String,
    pub model_digest: String,
    pub revision: String,
    pub pod: String,
    /// Unix time the model was loaded, OpenAI's `created`.
    pub created: u64,
    pub backend: Backend,
    pub auth: Auth,
    pub admission: Admission,
    pub limits: RequestLimits,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub audit: AuditLog,
    pub audit_level: AuditLevel,
    /// Refused requests of the current interval, recorded together.
    pub refused: RefusedRequests,
    pub redact: Vec<regex::Regex>,
    pub metrics: Arc<Metrics>,
    /// Whether each request gets a trace span (only when OTLP trace export is configured).
    pub trace_requests: bool,
    /// Whether requests are taken: set by loading (built-in) or the supervisor (vLLM).
    pub readiness: Readiness,
}

impl AppState {
    pub fn now_unix(&self) -> u64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
