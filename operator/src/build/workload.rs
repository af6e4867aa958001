//! The worker Deployment of one revision, its ServiceAccount and manifest ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};
use taimatsu_core::{EngineKind, ModelFormat, ParameterCount, memory_fit};
use taimatsu_crds::v1alpha1::{RolloutStrategy, SecretKeyRef};

use super::labels::{self, API_PORT, METRICS_PORT};
use super::{Inputs, child_meta};

const MODEL_DIR: &str = "/models";
const MANIFEST_DIR: &str = "/etc/taimatsu/manifest";
const API_KEYS_DIR: &str = "/etc/taimatsu/api-keys";
const CA_DIR: &str = "/etc/taimatsu/ca";
/// The non-root user the worker image runs as (distroless "nonroot").
const WORKER_UID: i64 = 65532;

pub fn service_account(inputs: &Inputs<'_>) -> ServiceAccount {
    let name = labels::worker_service_account(&inputs.deployment.name_any());
    ServiceAccount {
        metadata: child_meta(inputs, name),
        // Workers never talk to the API server.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Metadata of the objects of one revision: named after it and labelled with it.
fn revision_meta(inputs: &Inputs<'_>) -> ObjectMeta {
    let mut meta = child_meta(inputs, labels::revision_name(&inputs.deployment.name_any(), &inputs.revision));
    meta.labels.get_or_insert_default().insert(labels::REVISION_LABEL.to_owned(), inputs.revision.clone());
    meta
}

/// The file manifest the fetch step verifies against, immutable per revision.
pub fn manifest_config_map(inputs: &Inputs<'_>) -> ConfigMap {
    let model = &inputs.model.spec;
    // The file's content, not a Kubernetes object: a JSON value, whose keys serialize sorted.
    let manifest = json!({
        "model": inputs.model.name_any(),
        "source": model.source.uri,
        "format": model.format,
        "digest": inputs.model_digest,
        "files": model.files,
    });
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    ConfigMap {
        metadata: revision_meta(inputs),
        immutable: Some(true),
        data: Some(BTreeMap::from([("manifest.json".to_owned(), text)])),
        ..ConfigMap::default()
    }
}

pub fn deployment(inputs: &Inputs<'_>) -> Deployment {
    let md = inputs.deployment;
    let spec = &md.spec;
    let name = md.name_any();
    let revision_labels = labels::revision_selector(&name, &inputs.revision);
    let mut pod_labels = labels::common(&name);
    pod_labels.extend(revision_labels.clone());
    let meta = serde_json::to_value(revision_meta(inputs)).unwrap_or_default();

    let strategy = match spec.rollout.strategy {
        RolloutStrategy::Recreate => json!({ "type": "Recreate" }),
        RolloutStrategy::RollingUpdate => json!({
            "type": "RollingUpdate",
            "rollingUpdate": { "maxSurge": spec.rollout.max_surge, "maxUnavailable": spec.rollout.max_unavailable },
        }),
    };
    from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": { "matchLabels": revision_labels },
            "strategy": strategy,
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": 1,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": { "taimatsu.dev/model-digest": inputs.model_digest },
                },
                "spec": pod_spec(inputs),
            },
        },
    }))
}

fn pod_spec(inputs: &Inputs<'_>) -> Value {
    let md = inputs.deployment;
    let name = md.name_any();
    let placement = md.spec.placement.as_ref();
    let profile = inputs.profile.map(|p| &p.spec);

    let mut node_selector: BTreeMap<String, String> = profile.map(|p| p.node_selector.clone()).unwrap_or_default();
    node_selector.extend(placement.map(|p| p.node_selector.clone()).unwrap_or_default());
    let mut tolerations: Vec<Toleration> = profile.map(|p| p.tolerations.clone()).unwrap_or_default();
    for t in placement.map(|p| p.tolerations.clone()).unwrap_or_default() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }

    let gpus = gpus_per_replica(inputs);
    let mut volumes = vec![
        json!({ "name": "models", "emptyDir": { "sizeLimit": model_cache_size(inputs) } }),
        json!({ "name": "manifest", "configMap": { "name": labels::revision_name(&name, &inputs.revision) } }),
        json!({ "name": "tmp", "emptyDir": {} }),
    ];
    if gpus > 1 {
        // NCCL exchanges tensors through /dev/shm between tensor-parallel ranks.
        volumes.push(json!({ "name": "dshm", "emptyDir": { "medium": "Memory", "sizeLimit": "16Gi" } }));
    }
    if let Some(keys) = &md.spec.access.api_key_secret_ref {
        volumes.push(json!({ "name": "api-keys", "secret": { "secretName": keys.name, "items": [{ "key": keys.key, "path": "keys" }] } }));
    }
    if let Some(claim) = pvc_claim(&inputs.model.spec.source.uri) {
        volumes
            .push(json!({ "name": "model-source", "persistentVolumeClaim": { "claimName": claim, "readOnly": true } }));
    }
    if let Some(ca) = &inputs.model.spec.source.ca_bundle_ref {
        volumes.push(json!({ "name": "source-ca", "secret": { "secretName": ca.name, "items": [{ "key": ca.key, "path": "ca.pem" }] } }));
    }

    json!({
        "serviceAccountName": labels::worker_service_account(&name),
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID, "fsGroup": WORKER_UID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "affinity": placement.and_then(|p| p.affinity.clone()),
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": labels::revision_selector(&name, &inputs.revision) },
        }],
        "initContainers": [fetch_container(inputs)],
        "containers": [worker_container(inputs, gpus)],
        "volumes": volumes,
    })
}

fn security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn image(inputs: &Inputs<'_>) -> String {
    inputs.deployment.spec.engine.image.clone().unwrap_or_else(|| inputs.settings.worker_image.clone())
}

/// Where the fetch container sees a `pvc://<claim>/…` source's volume.
const PVC_MOUNT_ROOT: &str = "/mnt/taimatsu/pvc";

/// The claim of a `pvc://<claim>/<path>` source.
fn pvc_claim(uri: &str) -> Option<&str> {
    uri.strip_prefix("pvc://").and_then(|rest| rest.split('/').next()).filter(|c| !c.is_empty())
}

/// The init step: fetch the files from the source and verify every size and sha256.
fn fetch_container(inputs: &Inputs<'_>) -> Value {
    let source = &inputs.model.spec.source;
    let mut args = vec![
        "fetch".to_owned(),
        format!("--source={}", source.uri),
        format!("--manifest={MANIFEST_DIR}/manifest.json"),
        format!("--dest={MODEL_DIR}"),
    ];
    if let Some(mirror) = source.hf_mirror.clone().or_else(|| inputs.settings.hf_mirror.clone())
        && source.uri.starts_with("hf://")
    {
        args.push(format!("--hf-mirror={mirror}"));
    }
    let mut mounts = vec![
        json!({ "name": "models", "mountPath": MODEL_DIR }),
        json!({ "name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": true }),
        json!({ "name": "tmp", "mountPath": "/tmp" }),
    ];
    if let Some(claim) = pvc_claim(&source.uri) {
        // The fetcher reads pvc://<claim>/<path> from here (taimatsu_model_fetch::PVC_MOUNT_ROOT).
        mounts.push(
            json!({ "name": "model-source", "mountPath": format!("{PVC_MOUNT_ROOT}/{claim}"), "readOnly": true }),
        );
    }
    if source.ca_bundle_ref.is_some() {
        args.push(format!("--ca-bundle={CA_DIR}/ca.pem"));
        mounts.push(json!({ "name": "source-ca", "mountPath": CA_DIR, "readOnly": true }));
    }
    let env_from: Vec<Value> =
        source.credentials_secret_ref.iter().map(|s| json!({ "secretRef": { "name": s.name } })).collect();
    json!({
        "name": "fetch",
        "image": image(inputs),
        "args": args,
        "envFrom": env_from,
        "volumeMounts": mounts,
        // The worker writes "<Reason>: <detail>" here when it fails, e.g. DigestMismatch.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": { "requests": { "cpu": "500m", "memory": "256Mi" } },
        "securityContext": security_context(),
    })
}

fn worker_container(inputs: &Inputs<'_>, gpus: i32) -> Value {
    let md = inputs.deployment;
    let spec = &md.spec;
    let mut args = vec![
        "serve".to_owned(),
        format!("--engine={}", spec.engine.kind),
        format!("--model-dir={MODEL_DIR}"),
        format!("--manifest={MANIFEST_DIR}/manifest.json"),
        format!("--served-model-name={}", spec.model_ref.name),
        format!("--listen=0.0.0.0:{API_PORT}"),
        format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
        format!(
            "--audit-level={}",
            serde_json::to_value(spec.audit.level).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ),
    ];
    args.extend(spec.audit.redact_patterns.iter().map(|p| format!("--audit-redact={p}")));
    let mut mounts = vec![
        json!({ "name": "models", "mountPath": MODEL_DIR, "readOnly": true }),
        json!({ "name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": true }),
        json!({ "name": "tmp", "mountPath": "/tmp" }),
    ];
    if let Some(SecretKeyRef { .. }) = &spec.access.api_key_secret_ref {
        args.push(format!("--api-keys={API_KEYS_DIR}/keys"));
        mounts.push(json!({ "name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": true }));
    }
    let resources = match spec.engine.kind {
        EngineKind::Vllm => {
            let resource =
                inputs.profile.map(|p| p.spec.resource_name.clone()).unwrap_or_else(|| "nvidia.com/gpu".into());
            if gpus > 1 {
                mounts.push(json!({ "name": "dshm", "mountPath": "/dev/shm" }));
            }
            args.push("--".to_owned());
            args.extend(vllm_args(inputs));
            json!({ "requests": { "cpu": "4", "memory": "32Gi" }, "limits": { resource: gpus } })
        }
        EngineKind::Builtin => {
            let threads = spec.engine.threads.unwrap_or(2);
            // Slots and context are rendered, not left to the worker's defaults, because the
            // memory limit is computed from them: a KV cache the limit does not cover gets
            // the worker OOM-killed while it loads.
            let context = builtin_context(inputs);
            args.push(format!("--threads={threads}"));
            args.push(format!("--parallel={BUILTIN_SLOTS}"));
            args.push(format!("--context-len={context}"));
            if inputs.model.spec.format == ModelFormat::Gguf {
                args.push(format!("--gguf-type={}", spec.quantization));
            }
            let parameters = inputs.model.spec.parameters.parse().unwrap_or(ParameterCount(0));
            let bytes = u64::try_from(model_bytes(inputs)).unwrap_or(0);
            let memory = format!("{}Mi", memory_fit::builtin_worker_mib(parameters, bytes, BUILTIN_SLOTS, context));
            json!({ "requests": { "cpu": threads, "memory": memory }, "limits": { "memory": memory } })
        }
    };
    json!({
        "name": "worker",
        "image": image(inputs),
        "args": args,
        "env": [
            { "name": "TAIMATSU_REVISION", "value": inputs.revision },
            { "name": "TAIMATSU_MODEL_DIGEST", "value": inputs.model_digest },
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        ],
        "ports": [
            { "name": "http", "containerPort": API_PORT },
            { "name": "metrics", "containerPort": METRICS_PORT },
        ],
        // Loading tens of GiB of weights takes minutes: startup allows 30 of them.
        "startupProbe": { "httpGet": { "path": "/readyz", "port": "http" }, "periodSeconds": 10, "failureThreshold": 180 },
        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "http" }, "periodSeconds": 5, "failureThreshold": 3 },
        "livenessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 10, "failureThreshold": 6 },
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": security_context(),
    })
}

/// vLLM's arguments, after `--` on the worker's command line.
fn vllm_args(inputs: &Inputs<'_>) -> Vec<String> {
    let spec = &inputs.deployment.spec;
    let placement = spec.placement.as_ref();
    let mut args = vec![
        format!("--served-model-name={}", spec.model_ref.name),
        format!("--tensor-parallel-size={}", placement.map_or(1, |p| p.tensor_parallel)),
        format!("--pipeline-parallel-size={}", placement.map_or(1, |p| p.pipeline_parallel)),
        format!("--max-model-len={}", spec.engine.max_model_len.unwrap_or(inputs.model.spec.context_length)),
        format!(
            "--gpu-memory-utilization={}",
            spec.engine.gpu_memory_utilization.unwrap_or(taimatsu_core::memory_fit::DEFAULT_GPU_MEMORY_UTILIZATION)
        ),
        format!("--kv-cache-dtype={}", taimatsu_core::vllm::kv_cache_dtype_flag(spec.kv_cache_dtype)),
    ];
    args.extend(taimatsu_core::vllm::quantization_flags(spec.quantization).unwrap_or_default());
    args.extend(spec.engine.args.iter().cloned());
    args
}

/// GPUs (or MIG slices) per replica; 0 for the builtin engine.
pub fn gpus_per_replica(inputs: &Inputs<'_>) -> i32 {
    if inputs.deployment.spec.engine.kind == EngineKind::Builtin {
        return 0;
    }
    inputs.deployment.spec.placement.as_ref().map_or(1, |p| p.gpus())
}

/// Sequences the built-in engine decodes together.
const BUILTIN_SLOTS: u32 = 8;

/// The built-in engine's context per sequence: `engine.maxModelLen`, else the model's, at
/// most 4096 (the worker's own default).
fn builtin_context(inputs: &Inputs<'_>) -> u32 {
    let model = u32::try_from(inputs.model.spec.context_length).unwrap_or(4096).min(4096);
    inputs.deployment.spec.engine.max_model_len.and_then(|n| u32::try_from(n).ok()).unwrap_or(model).max(1)
}

fn model_bytes(inputs: &Inputs<'_>) -> i64 {
    inputs.model.spec.files.iter().map(|f| f.size).sum()
}

/// The model cache holds the files plus 10% for partial downloads.
fn model_cache_size(inputs: &Inputs<'_>) -> String {
    let bytes = model_bytes(inputs);
    if bytes == 0 {
        // Unpinned models: size unknown.
        return "1Ti".to_owned();
    }
    format!("{}Mi", (bytes + bytes / 10) / (1 << 20) + 64)
}

/// Converts a builder's JSON into the typed object. The shapes are fixed by the code,
/// not by input, so a failure is a builder bug, caught by the builder tests.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("builder produced an invalid object: {e}"))
}
