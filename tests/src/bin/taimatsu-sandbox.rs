//! The local sandbox: a real control plane with fake GPU nodes (kwok), an in-house HTTPS
//! model mirror (and, in `local` mode, a Hugging Face Hub mirror: `hub.url`, `hub-ca.pem`),
//! and the operator; then the examples, with the quickstart (and, on the pod
//! runner, the embeddings) model served for real. Kept running until SIGINT/SIGTERM.
//! Started by `hack/sandbox.sh up`, which waits for the `ready` file this writes and then
//! runs the demo.
//!
//! Two modes (TAIMATSU_NODE):
//! - `local` (default): Taimatsu's CRDs, the operator as a process (with its admission
//!   webhook and audit trail) and the pod runner that runs worker pods as local processes
//!   ([`Sandbox`]). Needs TAIMATSU_OPERATOR_BIN, TAIMATSU_WORKER_BIN, TAIMATSU_MODELS_DIR.
//! - `real`: the control plane is reachable from pods, and this writes `cluster-ready` once
//!   it is up. `hack/sandbox.sh` then joins the real node (`hack/real-node.sh`) and installs
//!   the Helm charts, whose operator pods run on that node; this waits for them, then applies
//!   the examples. The mirror listens where the node's pods reach it (TAIMATSU_MIRROR_IP,
//!   default the node's bridge, 10.85.0.1). Needs TAIMATSU_MODELS_DIR.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;
use taimatsu_tests::control_plane::ControlPlaneOptions;
use taimatsu_tests::mirror::Mirror;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig, SandboxOptions};
use taimatsu_tests::{ControlPlane, apply, repo_root};

/// Namespace the example models and deployments are applied to.
const DEMO_NAMESPACE: &str = "taimatsu-demo";
/// Where `hack/sandbox.sh` installs the charts on the real node (release `taimatsu`).
const CHART_NAMESPACE: &str = "taimatsu-system";

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{name} is not set (hack/sandbox.sh sets it)"))
}

/// Applies the example manifests; returns how many objects.
async fn apply_examples(client: &Client, mirror: &Mirror, real_node: bool) -> anyhow::Result<usize> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // The GPU examples' Models carry no file manifest (their real hashes are for the
    // organisation that mirrors them to pin); this namespace allows that, so the scheduler
    // places them on kwok's fake GPU nodes for the demo.
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace",
                     "metadata": { "name": DEMO_NAMESPACE, "labels": { "taimatsu.dev/allow-unpinned-models": "true" } } });
    namespaces.patch(DEMO_NAMESPACE, &PatchParams::apply(apply::FIELD_MANAGER), &Patch::Apply(ns)).await?;
    let mut applied = 0;
    let mut apply_value = async |doc: &serde_json::Value| -> anyhow::Result<()> {
        applied += apply::apply_yaml(client, DEMO_NAMESPACE, &serde_yaml::to_string(doc)?).await?.len();
        Ok(())
    };
    // What the GPU examples' sources name: the claim of mistral-mig's pvc:// source and
    // the S3 credentials of llama-70b's, so that the scheduler can place them.
    for doc in simulated_source_objects() {
        apply_value(&doc).await?;
    }
    // The GPU examples are placed by the real scheduler on kwok's fake GPU nodes (kwok marks
    // them running; nothing is served), and marked so.
    for sub in ["accelerator-profiles", "gpu"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples").join(sub))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            for doc in serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&file)?) {
                let mut doc = serde_json::Value::deserialize(doc)?;
                if doc["kind"] == "ModelDeployment" {
                    mark_simulated(&mut doc);
                }
                if !doc.is_null() {
                    apply_value(&doc).await?;
                }
            }
        }
    }
    // The quickstart, served for real: its Model points at this sandbox's mirror.
    apply_value(&mirror.example_model(client, DEMO_NAMESPACE, "examples/quickstart/model.yaml").await?).await?;
    let mut deployment: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("examples/quickstart/deployment.yaml"))?)?;
    if real_node {
        // The real node has the machine's CPUs (2 on the CI machines), of which the operator
        // pods request 100m each: the worker asks for one (`threads`), and a rollout
        // replaces its pod rather than adding a surge pod that would stay Pending.
        deployment["spec"]["engine"]["threads"] = json!(1);
        deployment["spec"]["rollout"] = json!({ "maxSurge": 0, "maxUnavailable": 1 });
    }
    apply_value(&deployment).await?;
    // The embeddings example, served for real too, on the pod runner. Not on the real node:
    // the quickstart's worker takes its CPU.
    if !real_node {
        const EMBEDDINGS: &str = "examples/embeddings/minilm.yaml";
        apply_value(&mirror.example_model(client, DEMO_NAMESPACE, EMBEDDINGS).await?).await?;
        let text = std::fs::read_to_string(repo_root().join(EMBEDDINGS))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(doc)?;
            if doc["kind"] != "Model" {
                apply_value(&doc).await?;
            }
        }
    }
    Ok(applied)
}

/// Label (and annotation, with the reason) of the ModelDeployments the sandbox places on
/// kwok's simulated GPU nodes: `kubectl get modeldeployments -L` shows it as a column.
const SIMULATED: &str = "sandbox.taimatsu.dev/simulated";

/// Marks a GPU example as simulated and leaves out its rollout analysis: its pods are
/// kwok's, which serve nothing, so an analysis could only fail (and the operator does not
/// contact kwok's pod addresses at all: see `addresses::served_pods`).
fn mark_simulated(doc: &mut serde_json::Value) {
    doc["metadata"]["labels"][SIMULATED] = json!("true");
    doc["metadata"]["annotations"][SIMULATED] =
        json!("placed by the real scheduler on a simulated GPU node (kwok): nothing is served, so no rollout analysis");
    if let Some(rollout) = doc["spec"]["rollout"].as_object_mut() {
        rollout.remove("analysis");
    }
}

/// The objects the GPU examples' sources refer to, as a cluster holding those models would
/// have them: a bound claim `model-store` (a PersistentVolume reserved for it, never
/// mounted: kwok runs no containers) and the Secret `model-store-credentials` (placeholder
/// keys: nothing is fetched on a simulated node).
fn simulated_source_objects() -> Vec<serde_json::Value> {
    let labels = json!({ SIMULATED: "true" });
    vec![
        json!({ "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": { "name": "sandbox-model-store", "labels": labels },
                "spec": { "capacity": { "storage": "500Gi" }, "accessModes": ["ReadOnlyMany"],
                          "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                          "claimRef": { "namespace": DEMO_NAMESPACE, "name": "model-store" },
                          "hostPath": { "path": "/var/lib/taimatsu-sandbox/model-store" } } }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": { "name": "model-store", "labels": labels },
                "spec": { "accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": "sandbox-model-store",
                          "resources": { "requests": { "storage": "500Gi" } } } }),
        json!({ "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "model-store-credentials", "labels": labels },
                "stringData": { "AWS_ACCESS_KEY_ID": "sandbox-placeholder", "AWS_SECRET_ACCESS_KEY": "sandbox-placeholder" } }),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/sandbox"));
    let real_node = std::env::var("TAIMATSU_NODE").is_ok_and(|v| v == "real");
    let mirror_ip: IpAddr = std::env::var("TAIMATSU_MIRROR_IP").as_deref().unwrap_or("10.85.0.1").parse()?;
    let options = ControlPlaneOptions { pod_reachable_at: real_node.then_some(mirror_ip), ..Default::default() };
    let cp = ControlPlane::start_with(dir.join("cluster"), options).await?;
    let client = cp.client().await?;
    std::fs::write(dir.join("kubeconfig.path"), cp.kubeconfig("taimatsu-admin").display().to_string())?;
    let models_dir = env_path("TAIMATSU_MODELS_DIR")?;

    // Local: the operator process and the pod runner, with their mirror. Real: a mirror of
    // its own, and the chart's operator once hack/sandbox.sh has installed it.
    let (sandbox, own_mirror) = if real_node {
        // The operator pods go to the real node, not kwok's CPU node.
        taimatsu_tests::fleet::cordon(&client, taimatsu_tests::fleet::CPU_NODE).await?;
        let mirror = Mirror::serve(models_dir, Some(mirror_ip)).await?;
        std::fs::write(dir.join("cluster-ready"), &cp.server)?;
        println!("control plane up at {}; waiting for the operator from the Helm chart", cp.server);
        taimatsu_tests::helm::wait_for_operator(&client, CHART_NAMESPACE, "taimatsu", Duration::from_secs(600)).await?;
        (None, Some(mirror))
    } else {
        let config = SandboxConfig {
            operator_bin: env_path("TAIMATSU_OPERATOR_BIN")?,
            worker_bin: env_path("TAIMATSU_WORKER_BIN")?,
            models_dir,
            state_dir: dir.join("state"),
        };
        let sandbox = Sandbox::start_with(&cp, &client, config, SandboxOptions::pod_runner()).await?;
        println!("operator log: {}", sandbox.operator_log.display());
        // For `kubectl taimatsu model manifest hf://… --mirror "$(cat hub.url)" --ca hub-ca.pem`.
        println!("Hugging Face Hub mirror (the operator's --hf-mirror): {}", sandbox.hub.url);
        std::fs::write(dir.join("hub.url"), &sandbox.hub.url)?;
        std::fs::write(dir.join("hub-ca.pem"), sandbox.hub.ca_pem.as_deref().unwrap_or_default())?;
        std::fs::write(dir.join("audit.path"), sandbox.audit_log.display().to_string())?;
        (Some(sandbox), None)
    };
    let mirror = match (&sandbox, &own_mirror) {
        (Some(sandbox), _) => &sandbox.mirror,
        (None, mirror) => mirror.as_ref().ok_or_else(|| anyhow::anyhow!("no model mirror"))?,
    };
    let applied = apply_examples(&client, mirror, real_node).await?;
    std::fs::write(dir.join("ready"), format!("{applied} example objects applied\n"))?;
    println!("sandbox ready: {} ({applied} example objects in namespace {DEMO_NAMESPACE})", cp.server);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    for file in ["ready", "cluster-ready"] {
        let _ = std::fs::remove_file(Path::new(&dir).join(file));
    }
    println!("sandbox stopping");
    drop(sandbox);
    drop(own_mirror);
    // Returning ends the process; the control plane's processes die with it
    // (parent-death signal, see taimatsu_tests::process).
    Ok(())
}
