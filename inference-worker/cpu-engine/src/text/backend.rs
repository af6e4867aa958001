//! The process-wide llama.cpp backend. llama.cpp may be initialised only once per process
//! (llama-cpp-2 refuses a second `LlamaBackend::init`), yet several engines may be loaded,
//! so the backend lives in a static that is never torn down.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The initialised backend, initialising it (and llama.cpp's logging) on first use.
pub(crate) fn backend() -> Result<&'static LlamaBackend, String> {
    BACKEND
        .get_or_init(|| {
            // llama.cpp writes a lot to stderr (every metadata key at load). Route it to
            // `tracing` instead, under the target `llama-cpp-2` with llama.cpp's own levels,
            // so the worker's log filter decides (e.g. `llama-cpp-2=warn`).
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|err| format!("cannot initialise llama.cpp: {err}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}
