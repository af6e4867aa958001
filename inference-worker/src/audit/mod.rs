//! Request audit: one hash-chained record per request (the chain format and its verifier
//! are `taimatsu_core::audit_chain`, shared with the operator and the kubectl plugin).

pub mod level;
pub mod record;
pub mod refusals;
pub mod writer;

pub use level::AuditLevel;
pub use record::{RequestRecord, redact};
pub use refusals::RefusedRequests;
pub use writer::{AuditCounters, AuditLog, AuditSinks, FailurePolicy, FsyncPolicy};
