//! The local sandbox: a real control plane with fake GPU nodes (kwok), Taimatsu's CRDs,
//! the operator with its admission webhook and audit trail, an in-house HTTPS model
//! mirror, and the pod runner that runs worker pods as local processes; then the
//! examples, with the quickstart (and, on the pod runner, the embeddings) model served
//! for real. Kept running until SIGINT/SIGTERM. Started by `hack/sandbox.sh up`, which
//! waits for the `ready` file this writes and then runs the demo.
//!
//! Environment: TAIMATSU_OPERATOR_BIN, TAIMATSU_WORKER_BIN, TAIMATSU_MODELS_DIR (set by
//! hack/sandbox.sh). With TAIMATSU_NODE=real no pod runner starts: `hack/real-node.sh`
//! joins a real kubelet to this control plane once it is ready, and the mirror listens where
//! that node's pods reach it (TAIMATSU_MIRROR_IP, default the node's bridge, 10.85.0.1).

use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig, SandboxOptions};
use taimatsu_tests::{ControlPlane, apply, repo_root};

/// Namespace the example models and deployments are applied to.
const DEMO_NAMESPACE: &str = "taimatsu-demo";

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{name} is not set (hack/sandbox.sh sets it)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/sandbox"));
    let cp = ControlPlane::start_in(dir.join("cluster")).await?;
    let client = cp.client().await?;
    let config = SandboxConfig {
        operator_bin: env_path("TAIMATSU_OPERATOR_BIN")?,
        worker_bin: env_path("TAIMATSU_WORKER_BIN")?,
        models_dir: env_path("TAIMATSU_MODELS_DIR")?,
        state_dir: dir.join("state"),
    };
    let real_node = std::env::var("TAIMATSU_NODE").is_ok_and(|v| v == "real");
    let options = if real_node {
        let ip: IpAddr = std::env::var("TAIMATSU_MIRROR_IP").as_deref().unwrap_or("10.85.0.1").parse()?;
        SandboxOptions::real_node(ip)
    } else {
        SandboxOptions::pod_runner()
    };
    let sandbox = Sandbox::start_with(&cp, &client, config, options).await?;
    println!("operator log: {}", sandbox.operator_log.display());

    let namespaces: Api<Namespace> = Api::all(client.clone());
    // The GPU examples' Models carry no file manifest (their real hashes are for the
    // organisation that mirrors them to pin); this namespace allows that, so the scheduler
    // places them on kwok's fake GPU nodes for the demo.
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace",
                     "metadata": { "name": DEMO_NAMESPACE, "labels": { "taimatsu.dev/allow-unpinned-models": "true" } } });
    namespaces.patch(DEMO_NAMESPACE, &PatchParams::apply(apply::FIELD_MANAGER), &Patch::Apply(ns)).await?;
    let mut applied = 0;
    // The GPU examples are placed by the real scheduler on kwok's fake GPU nodes (kwok marks
    // them running; nothing is served).
    for sub in ["accelerator-profiles", "gpu"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples").join(sub))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &std::fs::read_to_string(&file)?).await?.len();
        }
    }
    // The quickstart, served for real: its Model points at this sandbox's mirror.
    let model = sandbox.quickstart_model(&client, DEMO_NAMESPACE).await?;
    applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &serde_yaml::to_string(&model)?).await?.len();
    let mut deployment: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("examples/quickstart/deployment.yaml"))?)?;
    if real_node {
        // The real node has the machine's CPUs (2 on the CI machines) and each worker asks
        // for `threads` of them: a surge pod would stay Pending, so replace instead.
        deployment["spec"]["rollout"] = json!({ "maxSurge": 0, "maxUnavailable": 1 });
    }
    applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &serde_yaml::to_string(&deployment)?).await?.len();
    // The embeddings example, served for real too, on the pod runner. Not on the real node:
    // the quickstart's worker takes both of its CPUs (2 on the CI machines).
    if !real_node {
        const EMBEDDINGS: &str = "examples/embeddings/minilm.yaml";
        let model = sandbox.mirror.example_model(&client, DEMO_NAMESPACE, EMBEDDINGS).await?;
        applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &serde_yaml::to_string(&model)?).await?.len();
        let text = std::fs::read_to_string(repo_root().join(EMBEDDINGS))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(doc)?;
            if doc["kind"] != "Model" {
                applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &serde_yaml::to_string(&doc)?).await?.len();
            }
        }
    }

    std::fs::write(dir.join("kubeconfig.path"), cp.kubeconfig("taimatsu-admin").display().to_string())?;
    std::fs::write(dir.join("audit.path"), sandbox.audit_log.display().to_string())?;
    std::fs::write(dir.join("ready"), format!("{applied} example objects applied\n"))?;
    println!("sandbox ready: {} ({applied} example objects in namespace {DEMO_NAMESPACE})", cp.server);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    let _ = std::fs::remove_file(dir.join("ready"));
    println!("sandbox stopping");
    drop(sandbox);
    // Returning ends the process; the control plane's processes die with it
    // (parent-death signal, see taimatsu_tests::process).
    Ok(())
}
