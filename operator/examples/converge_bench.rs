//! Operator benchmark on the local control plane (not a test: it reports numbers).
//!
//! 1. apply → children: for 50 ModelDeployments applied one at a time, the time from
//!    the apply until the worker Deployment exists (p50/p99).
//! 2. convergence: 1000 ModelDeployments applied at once, the time until every one
//!    has a `Ready` condition for its generation.
//! 3. the operator's peak RSS (VmHWM) over the whole run.
//!
//! Deployments use the builtin engine with `replicas: 0`, so the numbers measure the
//! operator and the API server, not 1000 pods on a 2-core machine.
//! Usage: converge_bench <path to taimatsu-operator> [count]   (see hack/bench-operator.sh)

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::{ControlPlane, crds};

const NS: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let operator = args.next().ok_or_else(|| anyhow::anyhow!("usage: converge_bench OPERATOR_BINARY [COUNT]"))?;
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(1000);

    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    crds::ensure_installed(&client).await?;
    let params = PatchParams::apply("bench").force();
    Api::<Namespace>::all(client.clone())
        .patch(
            NS,
            &params,
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } })),
        )
        .await?;
    let model = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "smol" },
        "spec": { "source": { "uri": "https://mirror.example/smol/" }, "format": "gguf",
                  "files": [{ "path": "m.gguf", "size": 98362432, "sha256": "b".repeat(64) }],
                  "architecture": "llama", "parameters": "135M", "contextLength": 8192, "license": "Apache-2.0" }
    });
    Api::<Model>::namespaced(client.clone(), NS).patch("smol", &params, &Patch::Apply(model)).await?;

    let mut cmd = Command::new(&operator);
    cmd.env("KUBECONFIG", cp.kubeconfig("taimatsu-admin"))
        .env("RUST_LOG", "warn")
        .args(["--lease-namespace=default", "--http-addr=127.0.0.1:0"]);
    let (child, _) = cp.start_process("operator", cmd)?;
    let pid = child.id();

    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let md = |name: &str| {
        json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": name },
                "spec": { "modelRef": { "name": "smol" }, "quantization": "q4_1", "engine": { "type": "builtin" }, "replicas": 0 } })
    };

    // 1. apply → children, one at a time (the first also waits for leadership).
    let mut latencies = Vec::new();
    for i in 0..51 {
        let name = format!("single-{i}");
        let started = Instant::now();
        mds.patch(&name, &params, &Patch::Apply(md(&name))).await?;
        let selector = format!("taimatsu.dev/model-deployment={name}");
        loop {
            if !deployments.list(&ListParams::default().labels(&selector)).await?.items.is_empty() {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "{name}: no Deployment after 60s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if i > 0 {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];

    // 2. convergence of `count` deployments applied at once.
    let started = Instant::now();
    let names: Vec<String> = (0..count).map(|i| format!("fleet-{i}")).collect();
    for chunk in names.chunks(50) {
        let applies = chunk.iter().map(|n| {
            let (mds, params, body) = (mds.clone(), params.clone(), md(n));
            async move { mds.patch(n, &params, &Patch::Apply(body)).await }
        });
        for r in futures::future::join_all(applies).await {
            r?;
        }
    }
    let applied = started.elapsed();
    let converged = loop {
        let list = mds.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|m| m.metadata.name.as_deref().is_some_and(|n| n.starts_with("fleet-")))
            .filter(|m| {
                m.status.as_ref().is_some_and(|s| {
                    s.observed_generation == m.metadata.generation
                        && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == count {
            break started.elapsed();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {ready} of {count} converged in 600s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?").to_owned();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| apply → worker Deployment created, p50 (50 samples) | {:.1} ms |", pct(0.50).as_secs_f64() * 1e3);
    println!("| apply → worker Deployment created, p99 (50 samples) | {:.1} ms |", pct(0.99).as_secs_f64() * 1e3);
    println!("| {count} ModelDeployments: all applied after | {:.1} s |", applied.as_secs_f64());
    println!("| {count} ModelDeployments: all Ready (converged) after | {:.1} s |", converged.as_secs_f64());
    println!("| operator peak RSS (VmHWM) | {} |", peak.trim_start_matches("VmHWM:").trim());
    Ok(())
}
