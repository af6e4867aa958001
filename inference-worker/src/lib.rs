//! The inference worker as a library: the binary (`main.rs`) is a thin CLI over it, and the
//! fuzz target and tests reach the request parsing through it.

pub mod api;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod serve;
pub mod termination;

/// Everything the worker does with untrusted request bytes before a backend sees them:
/// parse each OpenAI body type and validate it. Used by the fuzz target
/// (`inference-worker/fuzz`) and the randomized test; it must never panic.
pub fn parse_untrusted_request(body: &[u8]) {
    use api::types::{CompletionRequest, EmbeddingRequest, Sampling};
    use api::validate::{self, RequestLimits};
    let limits = RequestLimits { max_tokens: 512, max_stop: 4 };
    let _ = validate::chat(body, "m", &limits);
    if let Ok(req) = api::parse::json_body::<CompletionRequest>(body) {
        let _ = validate::model(&req.model, "m");
    }
    if let Ok(sampling) = api::parse::json_body::<Sampling>(body) {
        let _ = validate::sampling(sampling, &limits);
    }
    let _ = api::parse::json_body::<EmbeddingRequest>(body);
}
