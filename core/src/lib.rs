//! Taimatsu's domain logic, shared by the operator, the inference worker and the
//! kubectl plugin. Nothing here talks to Kubernetes: these are pure functions and
//! plain types, so they are tested without a cluster and reused without pulling kube in.

pub mod engine;
pub mod manifest;
pub mod memory_fit;
pub mod model_format;
pub mod parameters;
pub mod quantization;
pub mod vllm;

pub use engine::EngineKind;
pub use manifest::{ManifestEntry, ManifestPathError, manifest_digest, validate_relative_path};
pub use model_format::ModelFormat;
pub use parameters::{ParameterCount, ParameterCountError};
pub use quantization::{KvCacheDtype, Quantization};
