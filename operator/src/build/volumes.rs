//! The worker pod's volumes, the names its containers mount them by, and the claim of a
//! `pvc://` source.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource, SecretVolumeSource,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::sizing::model_cache_size;
use super::{Inputs, labels};

/// The verified model files: written by the fetch step, read by the worker.
pub const MODELS: &str = "models";
/// The revision's manifest ConfigMap.
pub const MANIFEST: &str = "manifest";
/// The only writable directory besides the model cache (the root filesystem is read-only).
pub const TMP: &str = "tmp";
/// Shared memory for tensor-parallel ranks.
pub const DSHM: &str = "dshm";
/// The API keys the worker accepts.
pub const API_KEYS: &str = "api-keys";
/// The worker's request audit log: on a volume of the pod, so that a restarted container
/// continues the same chain (the worker resumes the file it finds).
pub const AUDIT: &str = "audit";
/// The claim of a `pvc://` source.
pub const MODEL_SOURCE: &str = "model-source";
/// The CA bundle of the model source.
pub const SOURCE_CA: &str = "source-ca";

/// Every volume of the worker pod. Their order is part of the object, pinned by the fixtures.
pub fn volumes(inputs: &Inputs<'_>, gpus: i32) -> Vec<Volume> {
    let md = inputs.deployment;
    let source = &inputs.model.spec.source;
    let mut volumes = vec![
        empty_dir(MODELS, EmptyDirVolumeSource { size_limit: Some(Quantity(model_cache_size(inputs))), medium: None }),
        Volume {
            name: MANIFEST.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: labels::revision_name(&md.name_any(), &inputs.revision),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir(TMP, EmptyDirVolumeSource::default()),
        // Past the limit the kubelet evicts the pod: records go to stdout too, the copy a
        // log pipeline ships off the node.
        empty_dir(
            AUDIT,
            EmptyDirVolumeSource { size_limit: Some(Quantity(AUDIT_VOLUME_SIZE.to_owned())), medium: None },
        ),
    ];
    if gpus > 1 {
        // NCCL exchanges tensors through /dev/shm between tensor-parallel ranks.
        let shm =
            EmptyDirVolumeSource { medium: Some("Memory".to_owned()), size_limit: Some(Quantity("16Gi".to_owned())) };
        volumes.push(empty_dir(DSHM, shm));
    }
    if let Some(keys) = &md.spec.access.api_key_secret_ref {
        volumes.push(secret_file(API_KEYS, &keys.name, &keys.key, "keys"));
    }
    if let Some(claim) = pvc_claim(&source.uri) {
        volumes.push(Volume {
            name: MODEL_SOURCE.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_owned(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    if let Some(ca) = &source.ca_bundle_ref {
        volumes.push(secret_file(SOURCE_CA, &ca.name, &ca.key, "ca.pem"));
    }
    volumes
}

/// The size limit of the audit volume (a metadata record is ≈ 0.5 KB: millions of requests).
pub const AUDIT_VOLUME_SIZE: &str = "1Gi";

fn empty_dir(name: &str, source: EmptyDirVolumeSource) -> Volume {
    Volume { name: name.to_owned(), empty_dir: Some(source), ..Volume::default() }
}

/// A volume holding the `key` of Secret `secret` as the file `path`.
fn secret_file(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath { key: key.to_owned(), path: path.to_owned(), mode: None }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A mount of volume `name` at `path`. A writable mount leaves `readOnly` out rather than
/// setting it false, as the reviewed objects have it.
pub fn mount(name: &str, path: impl Into<String>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The claim of a `pvc://<claim>/<path>` source.
pub fn pvc_claim(uri: &str) -> Option<&str> {
    uri.strip_prefix("pvc://").and_then(|rest| rest.split('/').next()).filter(|c| !c.is_empty())
}
