//! One request from arrival to its last byte: metrics and the audit record are written
//! exactly once, when the request completes, fails, or the client goes away (Drop).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::metrics::{Endpoint, EndpointLabels, RequestLabels, StatusClass};
use super::state::AppState;
use crate::api::ApiError;
use crate::audit::{AuditLevel, RequestRecord, redact};

/// Status recorded when the client disconnected before the response ended (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;
/// A request without a valid API key: counted, not recorded one by one.
const UNAUTHORIZED: u16 = 401;

pub struct RequestScope {
    state: Arc<AppState>,
    endpoint: Endpoint,
    started: Instant,
    request_id: String,
    caller: Caller,
    status: u16,
    prompt_tokens: u32,
    completion_tokens: u32,
    finish_reason: Option<String>,
    prompt_sha256: String,
    prompt_text: Option<String>,
    response_hash: Sha256,
    response_text: Option<String>,
    first_token: bool,
    done: bool,
    /// The admission slot, held until the last byte.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The request's trace span (exported over OTLP when configured); it ends with the scope.
    span: tracing::Span,
}

fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let digest = Sha256::digest(format!("{now}-{n}-{pid}").as_bytes());
    hex::encode(&digest[..12])
}

impl RequestScope {
    pub fn new(state: Arc<AppState>, endpoint: Endpoint, headers: &axum::http::HeaderMap) -> Self {
        state.metrics.in_flight.inc();
        let full = state.audit_level == AuditLevel::Full;
        let request_id = new_request_id();
        // Only when traces are exported: an unexported span still costs a registry entry and
        // field formatting on the hot path.
        let span = if !state.trace_requests {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "request",
                otel.name = endpoint.span_name(),
                otel.kind = "server",
                request_id = %request_id,
                gen_ai.request.model = %state.served_model,
                taimatsu.revision = %state.revision,
                http.response.status_code = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                taimatsu.caller = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
        taimatsu_telemetry::extract_parent(&span, headers);
        Self {
            state,
            endpoint,
            started: Instant::now(),
            request_id,
            caller: Caller::default(),
            status: CLIENT_CLOSED,
            prompt_tokens: 0,
            completion_tokens: 0,
            finish_reason: None,
            prompt_sha256: String::new(),
            prompt_text: None,
            response_hash: Sha256::new(),
            response_text: full.then(String::new),
            first_token: false,
            done: false,
            permit: None,
            span,
        }
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The request's trace span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn hold(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    pub fn set_caller(&mut self, caller: Caller) {
        self.caller = caller;
    }

    /// The prompt as the audit sees it (hashed always; kept only at level `full`).
    pub fn set_prompt(&mut self, prompt: &str) {
        if self.state.audit_level == AuditLevel::None {
            return;
        }
        self.prompt_sha256 = hex::encode(Sha256::digest(prompt.as_bytes()));
        if self.state.audit_level == AuditLevel::Full {
            self.prompt_text = Some(prompt.to_owned());
        }
    }

    /// Generated text, as it is sent.
    pub fn push_response(&mut self, text: &str) {
        if !self.first_token && !text.is_empty() {
            self.first_token = true;
            self.state.metrics.time_to_first_token.observe(self.started.elapsed().as_secs_f64());
        }
        if self.state.audit_level == AuditLevel::None {
            return;
        }
        self.response_hash.update(text.as_bytes());
        if let Some(t) = &mut self.response_text {
            t.push_str(text);
        }
    }

    pub fn set_usage(&mut self, prompt_tokens: u32, completion_tokens: u32) {
        self.prompt_tokens = prompt_tokens;
        self.completion_tokens = completion_tokens;
    }

    pub fn set_finish_reason(&mut self, reason: &str) {
        self.finish_reason = Some(reason.to_owned());
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Records an error response and returns it.
    pub fn fail(mut self, error: ApiError) -> axum::response::Response {
        self.status = error.status.as_u16();
        axum::response::IntoResponse::into_response(error)
    }

    /// The request succeeded: records it and, under `--audit-fsync=always`, waits until its
    /// audit record is durable. A fail-closed audit failure turns into an error here, before
    /// the response is released.
    pub async fn complete(mut self, status: u16) -> Result<(), ApiError> {
        self.status = status;
        self.done = true;
        let ack = self.record();
        if let Some(ack) = ack {
            let result = ack.await.unwrap_or_else(|_| Err("audit writer stopped".into()));
            if let Err(e) = result {
                self.state.audit.check_available()?;
                tracing::warn!(error = %e, "request served although its audit record failed (fail-open)");
            }
        }
        Ok(())
    }

    fn record(&mut self) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        let m = &self.state.metrics;
        let elapsed = self.started.elapsed();
        self.span.record("http.response.status_code", self.status);
        self.span.record("gen_ai.usage.input_tokens", self.prompt_tokens);
        self.span.record("gen_ai.usage.output_tokens", self.completion_tokens);
        if let Some(caller) = &self.caller.key_id {
            self.span.record("taimatsu.caller", caller.as_str());
        }
        if self.status >= 500 {
            self.span.record("otel.status_code", "ERROR");
        }
        m.in_flight.dec();
        m.requests
            .get_or_create(&RequestLabels { endpoint: self.endpoint, status_class: StatusClass::of(self.status) })
            .inc();
        m.duration.get_or_create(&EndpointLabels { endpoint: self.endpoint }).observe(elapsed.as_secs_f64());
        m.prompt_tokens.inc_by(u64::from(self.prompt_tokens));
        m.generated_tokens.inc_by(u64::from(self.completion_tokens));
        if self.state.audit_level == AuditLevel::None || !self.state.audit.enabled() {
            return None;
        }
        if self.status == UNAUTHORIZED {
            // Counted into the interval's refused-requests record (audit/refusals.rs).
            self.state.refused.count(self.endpoint.as_str(), self.status);
            return None;
        }
        let patterns = &self.state.redact;
        let record = RequestRecord {
            kind: "request",
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            request_id: std::mem::take(&mut self.request_id),
            caller: self.caller.key_id.take(),
            endpoint: self.endpoint.as_str(),
            model: self.state.served_model.clone(),
            model_digest: self.state.model_digest.clone(),
            revision: self.state.revision.clone(),
            pod: self.state.pod.clone(),
            status: self.status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            prompt_sha256: std::mem::take(&mut self.prompt_sha256),
            response_sha256: hex::encode(std::mem::take(&mut self.response_hash).finalize()),
            finish_reason: self.finish_reason.take(),
            prompt: self.prompt_text.take().map(|t| redact(&t, patterns)),
            response: self.response_text.take().map(|t| redact(&t, patterns)),
            count: None,
            since: None,
        };
        self.state.audit.submit(record)
    }
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            // Errors and disconnects: recorded without waiting (there is no response to hold back).
            let _ = self.record();
        }
    }
}
