//! The builder inputs the tests build from: three cases that between them take every
//! branch of the builders (engine, source kind, credentials, CA bundle, mirror, API keys,
//! strategy, placement merges, unpinned files, egress with and without address ranges).

use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};

use std::collections::BTreeMap;

use taimatsu_core::EgressRanges;

use crate::build::{Inputs, NetworkSettings, Settings, revision_hash};

/// The manifest digest every case is built with.
const DIGEST: &str = "sha256:feed";

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid fixture object")
}

pub fn h100() -> AcceleratorProfile {
    from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "AcceleratorProfile", "metadata": { "name": "h100-80gb" },
        "spec": { "resourceName": "nvidia.com/gpu", "gpuMemoryGiB": 80, "gpusPerNode": 8,
                  "nodeSelector": { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" },
                  "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }] }
    }))
}

pub fn qwen() -> Model {
    from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "qwen", "namespace": "ml" },
        "spec": { "source": { "uri": "https://mirror.example/qwen/" }, "format": "safetensors",
                  "files": [{ "path": "model.safetensors", "size": 15_000_000_000i64, "sha256": "a".repeat(64) }],
                  "architecture": "qwen2", "parameters": "7.6B", "contextLength": 32768, "license": "Apache-2.0" }
    }))
}

pub fn tp2_deployment() -> ModelDeployment {
    from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": { "name": "chat", "namespace": "ml", "uid": "0000-1111" },
        "spec": { "modelRef": { "name": "qwen" }, "quantization": "fp8", "kvCacheDtype": "fp8",
                  "engine": { "type": "vllm", "maxModelLen": 16384, "args": ["--enable-prefix-caching"] },
                  "placement": { "acceleratorProfileRef": { "name": "h100-80gb" }, "tensorParallel": 2,
                                 "pipelineParallel": 1, "nodeSelector": { "topology.kubernetes.io/zone": "a" } },
                  "replicas": 2, "rollout": { "strategy": "RollingUpdate", "maxSurge": 0, "maxUnavailable": 1, "progressDeadlineSeconds": 1800 },
                  "rollback": { "automatic": true, "revisionHistoryLimit": 10 },
                  "audit": { "level": "metadata" },
                  "access": { "apiKeySecretRef": { "name": "chat-keys", "key": "keys" }, "egress": { "mode": "Restricted", "allowedCidrs": ["10.20.0.0/16"] } } }
    }))
}

/// Inputs for the focused tests, which vary one field of the tensor-parallel case.
pub fn inputs<'a>(
    md: &'a ModelDeployment,
    model: &'a Model,
    profile: &'a AcceleratorProfile,
    settings: &'a Settings,
    revision: &str,
) -> Inputs<'a> {
    Inputs {
        deployment: md,
        model,
        profile: Some(profile),
        model_digest: DIGEST.into(),
        revision: revision.into(),
        settings,
    }
}

/// One whole set of inputs, owned, for the fixture tests.
pub struct Case {
    pub deployment: ModelDeployment,
    pub model: Model,
    pub profile: Option<AcceleratorProfile>,
    pub settings: Settings,
    pub revision: &'static str,
}

impl Case {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            deployment: &self.deployment,
            model: &self.model,
            profile: self.profile.as_ref(),
            model_digest: DIGEST.into(),
            revision: self.revision.into(),
            settings: &self.settings,
        }
    }

    pub fn revision_hash(&self) -> String {
        revision_hash(&self.deployment, &self.model, DIGEST, self.profile.as_ref())
    }
}

/// Network settings a platform team sets: the operator in its own namespace with its
/// release's labels, an ingress controller and a monitoring namespace let in, CoreDNS
/// under its own labels, one mirror range, and the ranges users may open.
pub fn platform_network() -> NetworkSettings {
    NetworkSettings {
        operator_namespace: "platform".into(),
        operator_pod_labels: BTreeMap::from([
            ("app.kubernetes.io/instance".into(), "taimatsu".into()),
            ("app.kubernetes.io/name".into(), "taimatsu".into()),
        ]),
        ingress_namespaces: vec!["ingress-nginx".into()],
        monitoring_namespaces: vec!["monitoring".into(), "observability".into()],
        dns_namespace: "dns".into(),
        dns_pod_labels: BTreeMap::from([("app".into(), "coredns".into())]),
        mirror_cidrs: vec!["10.21.0.0/24".into()],
        egress_allowed: EgressRanges::parse_list("10.0.0.0/8").expect("ranges"),
    }
}

/// vLLM on two H100s (tensor parallel): API keys, one allowed address range, rolling
/// update without surge, the profile's and the placement's node selectors merged, the
/// platform's network settings.
pub fn tp2_h100() -> Case {
    Case {
        deployment: tp2_deployment(),
        model: qwen(),
        profile: Some(h100()),
        settings: Settings {
            worker_image: "registry.local/taimatsu/inference-worker:0.1.0".into(),
            hf_mirror: None,
            network: platform_network(),
        },
        revision: "0123456789",
    }
}

/// The built-in CPU engine: a GGUF model from an `hf://` source through the operator's
/// mirror, with credentials and a private CA; no profile, no placement, Recreate, full
/// audit with a redaction pattern, no API keys, egress restricted to DNS only, and a
/// model context above the engine's 4096 cap.
pub fn builtin_cpu() -> Case {
    let model = from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "smollm2", "namespace": "dev" },
        "spec": { "source": { "uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@main",
                              "credentialsSecretRef": { "name": "hf-token" },
                              "caBundleRef": { "name": "mirror-ca", "key": "ca.crt" } },
                  "format": "gguf",
                  "files": [{ "path": "smollm2-135m-instruct-q4_k_m.gguf", "size": 105_000_000i64, "sha256": "b".repeat(64) }],
                  "architecture": "llama", "parameters": "135M", "contextLength": 8192, "license": "Apache-2.0" }
    }));
    let deployment = from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": { "name": "tiny", "namespace": "dev", "uid": "2222-3333" },
        "spec": { "modelRef": { "name": "smollm2" }, "quantization": "q4_k_m",
                  "engine": { "type": "builtin", "threads": 4 },
                  "rollout": { "strategy": "Recreate", "maxSurge": 0, "maxUnavailable": 1, "progressDeadlineSeconds": 600 },
                  "audit": { "level": "full", "redactPatterns": ["[0-9]{16}"] },
                  "access": { "egress": { "mode": "Restricted" } } }
    }));
    Case {
        deployment,
        model,
        profile: None,
        settings: Settings {
            worker_image: "registry.local/taimatsu/inference-worker:0.1.0".into(),
            hf_mirror: Some("https://hf.mirror.internal".into()),
            network: NetworkSettings::default(),
        },
        revision: "abcdef0123",
    }
}

/// vLLM on one MIG slice, unpinned weights from a `pvc://` source (whose `hfMirror` does
/// not apply), an image override, GPU memory utilization, a placement toleration that
/// repeats the profile's and one that does not, node affinity, two allowed address ranges
/// and the default rollout.
pub fn single_gpu_pvc() -> Case {
    let profile = from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "AcceleratorProfile", "metadata": { "name": "a100-3g40gb" },
        "spec": { "resourceName": "nvidia.com/mig-3g.40gb", "gpuMemoryGiB": 40, "gpusPerNode": 14,
                  "nodeSelector": { "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB" },
                  "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }] }
    }));
    let model = from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "qwen-awq", "namespace": "ml" },
        "spec": { "source": { "uri": "pvc://model-store/qwen/Qwen2.5-7B-AWQ", "hfMirror": "https://unused.example" },
                  "format": "safetensors", "allowUnpinned": true,
                  "architecture": "qwen2", "parameters": "7.6B", "contextLength": 32768, "license": "Apache-2.0" }
    }));
    let deployment = from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": { "name": "awq", "namespace": "ml", "uid": "4444-5555" },
        "spec": { "modelRef": { "name": "qwen-awq" }, "quantization": "awq",
                  "engine": { "type": "vllm", "image": "registry.internal/taimatsu/worker:custom",
                              "gpuMemoryUtilization": 0.85 },
                  "placement": { "acceleratorProfileRef": { "name": "a100-3g40gb" },
                                 "tolerations": [
                                     { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
                                     { "key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule" } ],
                                 "affinity": { "nodeAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [
                                     { "weight": 50, "preference": { "matchExpressions": [
                                         { "key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"] } ] } } ] } } },
                  "replicas": 3,
                  "access": { "egress": { "allowedCidrs": ["10.30.0.0/16", "192.168.7.0/24"] } } }
    }));
    Case {
        deployment,
        model,
        profile: Some(profile),
        settings: Settings {
            worker_image: "registry.local/taimatsu/inference-worker:0.1.0".into(),
            hf_mirror: Some("https://hf.mirror.internal".into()),
            network: NetworkSettings::default(),
        },
        revision: "9876543210",
    }
}
