//! The revision hash: identity of what is served.

use serde_json::json;
use sha2::{Digest, Sha256};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};

/// First 10 hex characters of the SHA-256 over everything that defines what is
/// served: the model and its manifest digest, quantization, KV-cache dtype, engine
/// and its arguments, placement, and the accelerator profile. Replicas, rollout,
/// rollback, audit and access settings are left out: changing them is not a new
/// revision.
pub fn revision_hash(
    deployment: &ModelDeployment,
    model: &Model,
    model_digest: &str,
    profile: Option<&AcceleratorProfile>,
) -> String {
    let spec = &deployment.spec;
    let identity = json!({
        "model": { "name": spec.model_ref.name, "digest": model_digest, "source": model.spec.source, "format": model.spec.format },
        "quantization": spec.quantization,
        "kvCacheDtype": spec.kv_cache_dtype,
        "engine": spec.engine,
        "placement": spec.placement,
        "profile": profile.map(|p| json!({ "name": p.metadata.name, "spec": p.spec })),
    });
    let digest = Sha256::digest(identity.to_string().as_bytes());
    hex::encode(digest)[..10].to_owned()
}
