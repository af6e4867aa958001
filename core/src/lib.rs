//! Taimatsu's domain logic, shared by the operator, the inference worker and the
//! kubectl plugin. Nothing here talks to Kubernetes: these are pure functions and
//! plain types, so they are tested without a cluster and reused without pulling kube in.

pub mod address_scope;
pub mod audit_chain;
pub mod audit_tail;
pub mod egress_ranges;
pub mod engine;
pub mod file_verify;
pub mod hf;
pub mod manifest;
pub mod memory_fit;
pub mod model_format;
pub mod oci;
pub mod parameters;
pub mod quantization;
pub mod redact;
pub mod vllm;

pub use address_scope::{AddressScope, OutOfScope, ScopeParseError};
pub use egress_ranges::{EgressRangeError, EgressRanges, EgressRangesParseError};
pub use engine::EngineKind;
pub use file_verify::{VerifiedModel, VerifyError, sha256_file, verify_dir};
pub use hf::HfSource;
pub use manifest::{
    ManifestEntry, ManifestError, ManifestPathError, ModelManifest, manifest_digest, validate_relative_path,
};
pub use model_format::ModelFormat;
pub use oci::OciSource;
pub use parameters::{ParameterCount, ParameterCountError};
pub use quantization::{KvCacheDtype, Quantization};
