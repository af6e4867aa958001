//! Whole-object tests of the builders against reviewed fixtures in testdata/.
//! After an intended change, regenerate with `TAIMATSU_BLESS=1 cargo test -p
//! taimatsu-operator build::tests` and review the diff before committing.

use std::path::PathBuf;

use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};

use super::{Inputs, Settings, build};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid fixture object")
}

fn h100() -> AcceleratorProfile {
    from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "AcceleratorProfile", "metadata": { "name": "h100-80gb" },
        "spec": { "resourceName": "nvidia.com/gpu", "gpuMemoryGiB": 80, "gpusPerNode": 8,
                  "nodeSelector": { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" },
                  "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }] }
    }))
}

fn qwen() -> Model {
    from(json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "qwen", "namespace": "ml" },
        "spec": { "source": { "uri": "https://mirror.example/qwen/" }, "format": "safetensors",
                  "files": [{ "path": "model.safetensors", "size": 15_000_000_000i64, "sha256": "a".repeat(64) }],
                  "architecture": "qwen2", "parameters": "7.6B", "contextLength": 32768, "license": "Apache-2.0" }
    }))
}

fn tp2_deployment() -> ModelDeployment {
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

fn check_fixture(name: &str, actual: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/build/testdata").join(name);
    let rendered = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("TAIMATSU_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("write fixture");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pretty_assertions::assert_eq!(expected, rendered, "{} differs from the builder's output", path.display());
}

fn inputs<'a>(
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
        model_digest: "sha256:feed".into(),
        revision: revision.into(),
        settings,
    }
}

#[test]
fn tensor_parallel_vllm_deployment_on_h100_builds_the_reviewed_children() {
    let (md, model, profile) = (tp2_deployment(), qwen(), h100());
    let settings = Settings { worker_image: "registry.local/taimatsu/inference-worker:0.1.0".into(), hf_mirror: None };
    let inputs = inputs(&md, &model, &profile, &settings, "0123456789");
    let children = build(&inputs);
    check_fixture("tp2-h100-workload.json", &serde_json::to_value(&children.workload).expect("json"));
    check_fixture(
        "tp2-h100-other-children.json",
        &json!({
            "serviceAccount": children.service_account,
            "manifest": children.manifest,
            "service": children.service,
            "egressPolicy": children.egress_policy,
            "disruptionBudget": children.disruption_budget,
        }),
    );
}

#[test]
fn unrestricted_egress_builds_no_network_policy_and_the_service_selects_every_revision() {
    let (mut md, model, profile) = (tp2_deployment(), qwen(), h100());
    md.spec.access.egress.mode = taimatsu_crds::v1alpha1::EgressMode::Unrestricted;
    let settings = Settings { worker_image: "w".into(), hf_mirror: None };
    let inputs = inputs(&md, &model, &profile, &settings, "new");
    let children = build(&inputs);
    assert_eq!(children.egress_policy, None);
    let selector = children.service.spec.and_then(|s| s.selector).expect("selector");
    assert_eq!(selector.get("taimatsu.dev/revision"), None);
    assert_eq!(selector.get("taimatsu.dev/model-deployment").map(String::as_str), Some("chat"));
    assert_eq!(children.workload.metadata.name.as_deref(), Some("chat-new"));
}

#[test]
fn pvc_source_is_mounted_read_only_where_the_fetcher_reads_it() {
    let (md, mut model, profile) = (tp2_deployment(), qwen(), h100());
    model.spec.source.uri = "pvc://model-store/qwen/Qwen2.5-7B".into();
    let settings = Settings { worker_image: "w".into(), hf_mirror: None };
    let inputs = inputs(&md, &model, &profile, &settings, "r");
    let pod = serde_json::to_value(build(&inputs).workload).expect("json")["spec"]["template"]["spec"].clone();
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "model-source").cloned();
    assert_eq!(
        volume,
        Some(
            json!({ "name": "model-source", "persistentVolumeClaim": { "claimName": "model-store", "readOnly": true } })
        )
    );
    let fetch = &pod["initContainers"][0];
    assert!(
        fetch["volumeMounts"].as_array().unwrap().contains(
            &json!({ "name": "model-source", "mountPath": "/mnt/taimatsu/pvc/model-store", "readOnly": true })
        )
    );
    assert!(pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().all(|m| m["name"] != "model-source"));
}

#[test]
fn a_revision_snapshot_rebuilds_exactly_what_it_recorded() {
    let (md, model, profile) = (tp2_deployment(), qwen(), h100());
    let hash = crate::build::revision_hash(&md, &model, "sha256:feed", Some(&profile));
    let snapshot = crate::revision::Snapshot::of(&md, &model, "sha256:feed", Some(&profile), &hash);
    // The spec moves on: another quantization, more replicas.
    let mut later = md.clone();
    later.spec.quantization = taimatsu_core::Quantization::Fp8;
    later.spec.replicas = 3;
    let (rebuilt, rebuilt_model, rebuilt_profile) = snapshot.materialize(&later);
    assert_eq!(crate::build::revision_hash(&rebuilt, &rebuilt_model, "sha256:feed", rebuilt_profile.as_ref()), hash);
    assert_eq!(rebuilt.spec.replicas, 3, "replicas are not part of a revision");
    let settings = Settings { worker_image: "w".into(), hf_mirror: None };
    let original = build(&inputs(&md, &model, &profile, &settings, &hash)).workload;
    let again = build(&inputs(&rebuilt, &rebuilt_model, rebuilt_profile.as_ref().unwrap(), &settings, &hash)).workload;
    assert_eq!(original.spec.unwrap().template, again.spec.unwrap().template);
}
