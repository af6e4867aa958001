//! The local sandbox: a real control plane with fake GPU nodes, Taimatsu's CRDs
//! and the examples, kept running until SIGINT/SIGTERM. Started by
//! `hack/sandbox.sh up`, which waits for the `ready` file this writes.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use taimatsu_tests::{ControlPlane, apply, crds, repo_root};

/// Namespace the example models and deployments are applied to.
const DEMO_NAMESPACE: &str = "taimatsu-demo";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/sandbox"));
    let cp = ControlPlane::start_in(dir.join("cluster")).await?;
    let client = cp.client().await?;
    crds::ensure_installed(&client).await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": DEMO_NAMESPACE } });
    namespaces.patch(DEMO_NAMESPACE, &PatchParams::apply(apply::FIELD_MANAGER), &Patch::Apply(ns)).await?;
    let mut applied = 0;
    for sub in ["accelerator-profiles", "quickstart", "embeddings", "gpu"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples").join(sub))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            applied += apply::apply_yaml(&client, DEMO_NAMESPACE, &std::fs::read_to_string(&file)?).await?.len();
        }
    }

    let kubeconfig = cp.kubeconfig("taimatsu-admin");
    std::fs::write(dir.join("kubeconfig.path"), kubeconfig.display().to_string())?;
    std::fs::write(dir.join("ready"), format!("{applied} example objects applied\n"))?;
    println!("sandbox ready: {} ({applied} example objects in namespace {DEMO_NAMESPACE})", cp.server);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    let _ = std::fs::remove_file(dir.join("ready"));
    println!("sandbox stopping");
    // Returning ends the process; the control plane's processes die with it
    // (parent-death signal, see taimatsu_tests::process).
    Ok(())
}
