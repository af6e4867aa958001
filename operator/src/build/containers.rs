//! The worker pod's containers: the fetch step that verifies the model files, and the
//! worker that serves them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    Probe, ResourceRequirements, SecretEnvSource, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use taimatsu_core::{EngineKind, ModelFormat};

use super::Inputs;
use super::labels::{API_PORT, METRICS_PORT};
use super::sizing::{BUILTIN_SLOTS, builtin_context, builtin_memory};
use super::volumes::{self, mount, pvc_claim};

const MODEL_DIR: &str = "/models";
const MANIFEST_DIR: &str = "/etc/taimatsu/manifest";
const API_KEYS_DIR: &str = "/etc/taimatsu/api-keys";
const CA_DIR: &str = "/etc/taimatsu/ca";
/// The worker's request audit log, on the pod's audit volume.
pub const AUDIT_DIR: &str = "/var/lib/taimatsu/audit";
/// Where the fetch container sees a `pvc://<claim>/…` source's volume.
const PVC_MOUNT_ROOT: &str = "/mnt/taimatsu/pvc";

/// The init step: fetch the files from the source and verify every size and sha256.
pub fn fetch(inputs: &Inputs<'_>) -> Container {
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
    // Only built once validation passed, which it does for a branch or tag only in a
    // namespace that allows unpinned models: the fetch step refuses one otherwise.
    if crate::validate::unpinned_hf_revision(&source.uri).is_some() {
        args.push("--allow-branch-revision".to_owned());
    }
    let mut mounts = vec![
        mount(volumes::MODELS, MODEL_DIR, false),
        mount(volumes::MANIFEST, MANIFEST_DIR, true),
        mount(volumes::TMP, "/tmp", false),
    ];
    if let Some(claim) = pvc_claim(&source.uri) {
        // The fetcher reads pvc://<claim>/<path> from here (taimatsu_model_fetch::PVC_MOUNT_ROOT).
        mounts.push(mount(volumes::MODEL_SOURCE, format!("{PVC_MOUNT_ROOT}/{claim}"), true));
    }
    if source.ca_bundle_ref.is_some() {
        args.push(format!("--ca-bundle={CA_DIR}/ca.pem"));
        mounts.push(mount(volumes::SOURCE_CA, CA_DIR, true));
    }
    let env_from = source.credentials_secret_ref.iter().map(|s| EnvFromSource {
        secret_ref: Some(SecretEnvSource { name: s.name.clone(), optional: None }),
        ..EnvFromSource::default()
    });
    Container {
        name: "fetch".to_owned(),
        image: Some(image(inputs)),
        args: Some(args),
        // An empty list, not an absent one, without credentials: as the reviewed objects have it.
        env_from: Some(env_from.collect()),
        volume_mounts: Some(mounts),
        // The worker writes "<Reason>: <detail>" here when it fails, e.g. DigestMismatch.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities([("cpu", "500m".to_owned()), ("memory", "256Mi".to_owned())])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(security_context()),
        ..Container::default()
    }
}

/// The worker: the OpenAI-compatible API in front of the engine, on `gpus` GPUs.
pub fn worker(inputs: &Inputs<'_>, gpus: i32) -> Container {
    let spec = &inputs.deployment.spec;
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
    // A file on the pod's volume (the chain continues across container restarts) and stdout
    // (for the log pipeline), which the worker writes by default.
    args.push(format!("--audit-log={AUDIT_DIR}/requests.jsonl"));
    let mut mounts = vec![
        mount(volumes::MODELS, MODEL_DIR, true),
        mount(volumes::MANIFEST, MANIFEST_DIR, true),
        mount(volumes::TMP, "/tmp", false),
        mount(volumes::AUDIT, AUDIT_DIR, false),
    ];
    if spec.access.api_key_secret_ref.is_some() {
        args.push(format!("--api-keys={API_KEYS_DIR}/keys"));
        mounts.push(mount(volumes::API_KEYS, API_KEYS_DIR, true));
    }
    let resources = match spec.engine.kind {
        EngineKind::Vllm => {
            let resource =
                inputs.profile.map(|p| p.spec.resource_name.clone()).unwrap_or_else(|| "nvidia.com/gpu".into());
            if gpus > 1 {
                mounts.push(mount(volumes::DSHM, "/dev/shm", false));
            }
            args.push("--".to_owned());
            args.extend(vllm_args(inputs));
            ResourceRequirements {
                requests: Some(quantities([("cpu", "4".to_owned()), ("memory", "32Gi".to_owned())])),
                limits: Some(quantities([(resource.as_str(), gpus.to_string())])),
                ..ResourceRequirements::default()
            }
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
            let memory = builtin_memory(inputs, context);
            ResourceRequirements {
                requests: Some(quantities([("cpu", threads.to_string()), ("memory", memory.clone())])),
                limits: Some(quantities([("memory", memory)])),
                ..ResourceRequirements::default()
            }
        }
    };
    Container {
        name: "worker".to_owned(),
        image: Some(image(inputs)),
        args: Some(args),
        env: Some(vec![
            env("TAIMATSU_REVISION", &inputs.revision),
            env("TAIMATSU_MODEL_DIGEST", &inputs.model_digest),
            EnvVar {
                name: "POD_NAME".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".to_owned(), api_version: None }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![port("http", API_PORT), port("metrics", METRICS_PORT)]),
        // Loading tens of GiB of weights takes minutes: startup allows 30 of them.
        startup_probe: Some(http_probe("/readyz", 10, 180)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        volume_mounts: Some(mounts),
        resources: Some(resources),
        security_context: Some(security_context()),
        ..Container::default()
    }
}

/// vLLM's arguments, after `--` on the worker's command line.
fn vllm_args(inputs: &Inputs<'_>) -> Vec<String> {
    let spec = &inputs.deployment.spec;
    let placement = spec.placement.as_ref();
    taimatsu_core::vllm::server_args(&taimatsu_core::vllm::ServerSettings {
        served_model_name: &spec.model_ref.name,
        tensor_parallel: placement.map_or(1, |p| p.tensor_parallel),
        pipeline_parallel: placement.map_or(1, |p| p.pipeline_parallel),
        max_model_len: spec.engine.max_model_len.unwrap_or(inputs.model.spec.context_length),
        gpu_memory_utilization: spec
            .engine
            .gpu_memory_utilization
            .unwrap_or(taimatsu_core::memory_fit::DEFAULT_GPU_MEMORY_UTILIZATION),
        kv_cache_dtype: spec.kv_cache_dtype,
        quantization: spec.quantization,
        extra: &spec.engine.args,
    })
}

fn image(inputs: &Inputs<'_>) -> String {
    inputs.deployment.spec.engine.image.clone().unwrap_or_else(|| inputs.settings.worker_image.clone())
}

/// Both containers run unprivileged on a read-only root filesystem.
fn security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        ..SecurityContext::default()
    }
}

fn quantities<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, Quantity> {
    pairs.into_iter().map(|(name, amount)| (name.to_owned(), Quantity(amount))).collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..EnvVar::default() }
}

/// A named container port; the Service and the probes refer to it by name.
fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.to_owned()), container_port: port, ..ContainerPort::default() }
}

/// An HTTP GET of `path` on the `http` port every `period` seconds, failing after `failures`.
fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}
