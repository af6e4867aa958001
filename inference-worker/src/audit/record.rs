//! One request's audit record. What it carries is fixed here: who (API key id, never the
//! key), what model and digest and revision, when, how long, how many tokens, the status,
//! and SHA-256 of the prompt and the response. Full text only at audit level `full`, after
//! redaction; the hashes are of the original text, so a record proves what was said
//! without having to store it.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    pub kind: &'static str,
    pub time: String,
    pub request_id: String,
    pub caller: Option<String>,
    pub endpoint: &'static str,
    pub model: String,
    pub model_digest: String,
    pub revision: String,
    pub pod: String,
    pub status: u16,
    pub latency_ms: f64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_sha256: String,
    pub response_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Records that stand for several requests (`refused-requests`): how many, and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl RequestRecord {
    /// A record with every field empty, for the records that are not one request's.
    pub fn empty() -> Self {
        RequestRecord {
            kind: "",
            time: String::new(),
            request_id: String::new(),
            caller: None,
            endpoint: "",
            model: String::new(),
            model_digest: String::new(),
            revision: String::new(),
            pod: String::new(),
            status: 0,
            latency_ms: 0.0,
            prompt_tokens: 0,
            completion_tokens: 0,
            prompt_sha256: String::new(),
            response_sha256: String::new(),
            finish_reason: None,
            prompt: None,
            response: None,
            count: None,
            since: None,
        }
    }
}

/// Replaces every match of the deployment's redaction patterns with `[REDACTED]`.
pub fn redact(text: &str, patterns: &[regex::Regex]) -> String {
    let mut out = std::borrow::Cow::Borrowed(text);
    for p in patterns {
        if let std::borrow::Cow::Owned(s) = p.replace_all(&out, "[REDACTED]") {
            out = std::borrow::Cow::Owned(s);
        }
    }
    out.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_replaces_every_pattern() {
        let patterns = [regex::Regex::new(r"\b\d{3}-\d{2}-\d{4}\b").unwrap(), regex::Regex::new("(?i)secret").unwrap()];
        assert_eq!(redact("SSN 123-45-6789 is SECRET", &patterns), "SSN [REDACTED] is [REDACTED]");
        assert_eq!(redact("nothing here", &patterns), "nothing here");
    }
}
