//! Taimatsu's Kubernetes API: group `taimatsu.dev`, version `v1alpha1`.
//!
//! The Rust types are the source of truth; `crdgen` renders them to the CRD YAML
//! committed under `charts/taimatsu-crds/templates/`, and a test fails on drift.
//! Validation lives in the schema itself (OpenAPI bounds plus CEL rules), so the
//! API server rejects bad manifests whether or not the operator is running.

pub mod generate;
pub mod v1alpha1;

/// The API group of every Taimatsu resource.
pub const GROUP: &str = "taimatsu.dev";
