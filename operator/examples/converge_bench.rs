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

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
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
        .args(["--lease-namespace=default", "--http-addr=127.0.0.1:0", "--webhook-addr=", "--audit-stdout=false"])
        // The audit trail is on, as in production, in this run's own directory.
        .arg(format!("--audit-log={}", cp.dir().join("audit.jsonl").display()));
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
    let requests_before = api_requests(&client).await?;
    let cpu_before = cpu_seconds(pid)?;
    let processes_before = cpu_by_process();
    // Readiness is followed with a watch, as cheap for the API server as the operator's own:
    // polling a LIST of a thousand objects would itself load the API server being measured.
    let (ready_count, mut converged) = tokio::sync::watch::channel(0usize);
    let watch_mds = mds.clone();
    let watching = tokio::spawn(async move {
        let mut ready = std::collections::HashSet::new();
        let mut events = std::pin::pin!(watcher(watch_mds, watcher::Config::default()).applied_objects());
        while let Ok(Some(md)) = events.try_next().await {
            let name = md.metadata.name.clone().unwrap_or_default();
            let is_ready = md
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == md.metadata.generation && taimatsu_tests::wait::is_ready(s));
            if is_ready && name.starts_with("fleet-") {
                ready.insert(name);
            } else {
                ready.remove(&name);
            }
            let _ = ready_count.send(ready.len());
        }
    });
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
    let done = tokio::time::timeout(Duration::from_secs(600), converged.wait_for(|n| *n == count))
        .await
        .is_ok_and(|r| r.is_ok());
    anyhow::ensure!(done, "only {} of {count} converged in 600s", *converged.borrow());
    let converged = started.elapsed();
    watching.abort();
    let operator_cpu = cpu_seconds(pid)? - cpu_before;
    let mut processes: Vec<(String, f64)> = cpu_by_process()
        .into_iter()
        .map(|(name, t)| {
            let before = processes_before.get(&name).copied().unwrap_or(0.0);
            (name, t - before)
        })
        .filter(|(_, t)| *t >= 0.1)
        .collect();
    processes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut requests: Vec<((String, String), f64)> = api_requests(&client)
        .await?
        .into_iter()
        .map(|(k, n)| {
            let before = requests_before.get(&k).copied().unwrap_or(0.0);
            (k, n - before)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    requests.sort_by(|a, b| b.1.total_cmp(&a.1));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?").to_owned();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| apply → worker Deployment created, p50 (50 samples) | {:.1} ms |", pct(0.50).as_secs_f64() * 1e3);
    println!("| apply → worker Deployment created, p99 (50 samples) | {:.1} ms |", pct(0.99).as_secs_f64() * 1e3);
    println!("| {count} ModelDeployments: all applied after | {:.1} s |", applied.as_secs_f64());
    println!("| {count} ModelDeployments: all Ready (converged) after | {:.1} s |", converged.as_secs_f64());
    println!("| operator peak RSS (VmHWM) | {} |", peak.trim_start_matches("VmHWM:").trim());
    println!("| operator CPU time while converging | {operator_cpu:.1} s |");
    println!();
    println!(
        "CPU seconds while converging, by process (all on the same {} cores):",
        std::thread::available_parallelism()?
    );
    println!();
    println!("| process | CPU |");
    println!("|---|---|");
    for (name, t) in &processes {
        println!("| {name} | {t:.1} s |");
    }
    println!();
    println!("API server requests while converging (all clients: operator, controller-manager, this benchmark):");
    println!();
    println!("| verb | resource | requests |");
    println!("|---|---|---|");
    for ((verb, resource), n) in requests.iter().take(15) {
        println!("| {verb} | {resource} | {n:.0} |");
    }
    Ok(())
}

/// The API server's request counter, summed by verb and resource.
async fn api_requests(client: &kube::Client) -> anyhow::Result<HashMap<(String, String), f64>> {
    let metrics = client.request_text(axum::http::Request::get("/metrics").body(Vec::new())?).await?;
    let mut sums = HashMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            labels.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("").to_owned()
        };
        let key = (
            label("verb"),
            format!(
                "{}{}",
                label("resource"),
                Some(label("subresource")).filter(|s| !s.is_empty()).map(|s| format!("/{s}")).unwrap_or_default()
            ),
        );
        *sums.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(sums)
}

/// CPU seconds so far of every process on the machine, summed by command name.
fn cpu_by_process() -> HashMap<String, f64> {
    let mut sums = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        if let Ok(t) = cpu_seconds(pid) {
            *sums.entry(comm.trim().to_owned()).or_insert(0.0) += t;
        }
    }
    sums
}

/// User plus system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).unwrap_or_default().iter().filter_map(|f| f.parse::<f64>().ok()).sum();
    Ok(ticks / 100.0)
}
