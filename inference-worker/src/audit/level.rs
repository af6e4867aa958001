//! How much of each request the audit records (`--audit-level`).

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    /// No request records.
    None,
    /// Who, what, when, token counts, status, and SHA-256 of prompt and response.
    Metadata,
    /// Metadata plus the prompt and response text, after redaction.
    Full,
}
