//! `taimatsu.dev/v1alpha1`.

mod accelerator_profile;
mod common;
mod model;
mod model_deployment;

pub use accelerator_profile::{AcceleratorProfile, AcceleratorProfileSpec, AcceleratorProfileStatus};
pub use common::{ObjectRef, SecretKeyRef};
pub use model::{Model, ModelFile, ModelSignature, ModelSource, ModelSpec, ModelStatus, SignatureFormat};
pub use model_deployment::{
    AccessSpec, AnalysisSpec, AuditLevel, AuditSpec, CHANGE_CAUSE_ANNOTATION, EgressMode, EgressSpec, EngineSpec,
    IngressSpec, ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus, Placement, RollbackSpec, RolloutSpec,
    RolloutStrategy,
};
pub use taimatsu_core::{EngineKind, KvCacheDtype, ModelFormat, Quantization};

/// Maximum length of a ModelDeployment's name: generated child names append a
/// revision suffix and must stay within the 63-character label-value limit.
pub const MAX_DEPLOYMENT_NAME_LEN: usize = 40;
