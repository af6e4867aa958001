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
        // The pod's status is readable by everyone who may read pods: no credential a
        // fetch error echoed (a URL's user info, a pre-signed query) goes there. Redacted
        // before the cut, which could leave half a credential unrecognised. The kubelet
        // keeps at most 4096 bytes.
        let text: String = taimatsu_core::redact::redact(&text).chars().take(4000).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_log_carries_no_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let failure = Failure::new("FetchFailed", "GET https://bot:s3cr3t@mirror/q/a?X-Amz-Signature=f00d: 403");
        failure.write_termination_log(&path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "FetchFailed: GET https://***@mirror/q/a?X-Amz-Signature=***: 403"
        );
    }
}
