//! What answers requests: the built-in CPU engine in-process, or an OpenAI-compatible
//! upstream (vLLM) on loopback.

pub mod builtin;
pub mod readiness;
pub mod supervisor;
pub mod upstream;
pub mod vllm_metrics;

use std::sync::Arc;

pub use readiness::Readiness;

pub enum Backend {
    Builtin(builtin::Builtin),
    Upstream(Arc<upstream::Upstream>),
}
