//! How the worker fails: a fixed reason word and a message, written to the container's
//! termination log as `"<Reason>: <message>"` (the operator reads it into a condition:
//! DigestMismatch, FetchFailed, …) and to the logs.

use std::path::Path;

#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    /// Best effort: outside Kubernetes the termination log usually does not exist.
    pub fn write_termination_log(&self, path: &Path) {
        let text = format!("{}: {}", self.reason, self.message);
        // The kubelet keeps at most 4096 bytes.
        let text: String = text.chars().take(4000).collect();
        if let Err(e) = std::fs::write(path, text) {
            tracing::debug!(path = %path.display(), error = %e, "no termination log written");
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}
