//! Everything a request handler needs, shared behind an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::admission::Admission;
use super::auth::Auth;
use super::metrics::Metrics;
use crate::api::validate::RequestLimits;
use crate::audit::{AuditLevel, AuditLog};
use crate::backend::Backend;

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
    pub redact: Vec<regex::Regex>,
    pub metrics: Arc<Metrics>,
    /// Whether each request gets a trace span (only when OTLP trace export is configured).
    pub trace_requests: bool,
    /// Set once the model is verified and the backend answered its warm-up; cleared when it fails.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    pub fn now_unix(&self) -> u64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
