//! What answers requests: the built-in CPU engine in-process, or an OpenAI-compatible
//! upstream (vLLM) on loopback, with the supervisor that runs it. Nothing here knows the
//! HTTP server: backends hand back plain data, streams and errors of their own, and
//! `serve` turns them into responses, metrics and audit records.

pub mod builtin;
pub mod readiness;
pub mod supervisor;
pub mod upstream;
pub mod vllm_metrics;

use std::sync::Arc;

pub use readiness::Readiness;

/// The backend this worker serves with, chosen by `--engine`.
pub enum Backend {
    Builtin(builtin::Builtin),
    Upstream(Arc<upstream::Upstream>),
}
