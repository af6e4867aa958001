//! Reconcile errors, each with a bounded category for metrics and logs.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("control-plane audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("serializing a desired object: {0}")]
    Serialize(String),
    #[error("rollout state machine: {0}")]
    Stuck(String),
    /// A child's name is held by an object this ModelDeployment does not control; it is
    /// left as it is (applying with `force` would take it over).
    #[error(
        "{kind} {namespace}/{name} already exists and is {holder}, not controlled by this ModelDeployment: it is left untouched and nothing is rolled out; rename the ModelDeployment, or remove or rename that {kind}"
    )]
    ForeignChild { kind: String, namespace: String, name: String, holder: String },
}

impl Error {
    /// A fixed label value per variant: never the error's text, which is unbounded.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::NoNamespace => "invalid-object",
            // A head altered outside the operator: its own category, to alert on.
            Error::Audit(crate::audit::AuditError::TamperedHead { .. }) => "audit-head-tampered",
            Error::Audit(_) => "audit",
            Error::Serialize(_) | Error::Stuck(_) => "internal",
            Error::ForeignChild { .. } => "ownership",
        }
    }
}
