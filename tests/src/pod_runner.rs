//! A development stand-in for a kubelet: runs the worker pods the operator renders as
//! local processes, so the sandbox and the end-to-end test have a model really answering.
//!
//! It registers a Node (`sandbox-local`, not managed by kwok), keeps its Lease and Ready
//! condition fresh, and for every pod the scheduler binds to it runs what the pod spec
//! says — the `fetch` init container, then the `worker` container — with the same
//! arguments and environment (`envFrom` Secrets too: each key a variable), volumes mapped to directories (emptyDir → a directory,
//! ConfigMap and Secret → their keys written as files), and the listen addresses bound to a
//! loopback address of the pod's own (127.0.x.y: all of 127.0.0.0/8 is loopback on Linux),
//! which is reported as the pod IP, so the pod's ports are what the pod spec declares. It
//! reports status like a kubelet: init container exit code and termination message,
//! readiness from the worker's `/readyz`, restarts; it deletes pods whose deletion was
//! requested once their processes stopped. The worker's API address is also in the pod
//! annotation [`ENDPOINT_ANNOTATION`].
//!
//! This is a shortcut, not a kubelet: no images, no isolation, no probes other than
//! readiness, no resource limits. The README says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The node the runner plays the kubelet of.
pub const NODE_NAME: &str = "sandbox-local";
/// Pod annotation with the worker's local OpenAI endpoint, e.g. `http://127.0.0.1:41234`.
pub const ENDPOINT_ANNOTATION: &str = "sandbox.taimatsu.dev/endpoint";
const MANAGER: &str = "taimatsu-pod-runner";

/// Runs worker pods as processes of `worker_bin`, with state under `dir`.
pub struct PodRunner {
    client: Client,
    worker_bin: PathBuf,
    dir: PathBuf,
    pods: HashMap<String, RunningPod>,
    /// Pods started so far, for their loopback addresses.
    started: u32,
}

enum Stage {
    Fetching(Child),
    /// The fetch step failed; retried at the instant given.
    FetchFailed {
        exit_code: i32,
        message: String,
        retry_at: Instant,
    },
    Serving {
        child: Child,
        ready: bool,
    },
}

struct RunningPod {
    namespace: String,
    name: String,
    /// The pod's own loopback address, its "pod IP".
    ip: String,
    pod: Pod,
    dir: PathBuf,
    stage: Stage,
    fetch_restarts: i32,
    worker_restarts: i32,
    /// What was last reported, so an unchanged pod is not written every second.
    reported: String,
    /// Per container, the variables its `envFrom` Secrets give (read once, at the start).
    env_from: HashMap<String, Vec<(String, String)>>,
}

impl PodRunner {
    pub fn new(client: Client, worker_bin: PathBuf, dir: PathBuf) -> Self {
        PodRunner { client, worker_bin, dir, pods: HashMap::new(), started: 0 }
    }

    /// Registers the node, then runs its pods until the task is dropped.
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.register_node().await?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
        let mut events = watcher(pods, config).boxed();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => self.observe(pod).await,
                    Some(Ok(watcher::Event::Delete(pod))) => self.stop(&pod.uid().unwrap_or_default()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch"),
                    None => anyhow::bail!("pod watch ended"),
                },
                _ = tick.tick() => self.sync().await,
                _ = heartbeat.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        tracing::warn!(error = %e, "node heartbeat");
                    }
                }
            }
        }
    }

    async fn register_node(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "taimatsu.dev/sandbox": "local-processes",
            }},
            // Declared, not enforced (the runner sets no limits): room for the sandbox's
            // workers (the quickstart, its rollout's surge pod and the two embeddings
            // replicas ask for 2 CPUs each), whatever the machine has.
            "status": {
                "capacity": { "cpu": "8", "memory": "16Gi", "pods": "20", "ephemeral-storage": "100Gi" },
                "allocatable": { "cpu": "8", "memory": "16Gi", "pods": "20", "ephemeral-storage": "100Gi" },
                "nodeInfo": { "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "taimatsu-pod-runner" },
            },
        });
        let params = PatchParams::apply(MANAGER).force();
        nodes.patch(NODE_NAME, &params, &Patch::Apply(&node)).await?;
        nodes.patch_status(NODE_NAME, &params, &Patch::Apply(&node)).await?;
        self.heartbeat().await
    }

    /// What a kubelet does every few seconds: renew the node Lease, report Ready.
    async fn heartbeat(&self) -> anyhow::Result<()> {
        let now = Timestamp::now().to_string();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": { "name": NODE_NAME },
            // MicroTime: exactly six fractional digits.
            "spec": { "holderIdentity": NODE_NAME, "leaseDurationSeconds": 40,
                      "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string() },
        });
        leases.patch(NODE_NAME, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease)).await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = json!({ "status": { "conditions": [{
            "type": "Ready", "status": "True", "reason": "PodRunnerReady", "message": "taimatsu pod runner is running",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }]}});
        nodes.patch_status(NODE_NAME, &PatchParams::default(), &Patch::Strategic(status)).await?;
        Ok(())
    }

    async fn observe(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.stop(&uid);
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let _ = pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await;
            return;
        }
        if self.pods.contains_key(&uid) {
            return;
        }
        let dir = self.dir.join(&uid);
        self.started += 1;
        let n = self.started + 1;
        let mut running = RunningPod {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            ip: format!("127.0.{}.{}", 1 + n / 250, 1 + n % 250),
            pod,
            dir,
            stage: Stage::FetchFailed { exit_code: 0, message: String::new(), retry_at: Instant::now() },
            fetch_restarts: -1,
            worker_restarts: 0,
            reported: String::new(),
            env_from: HashMap::new(),
        };
        match self.env_from(&running.pod, &running.namespace).await {
            Ok(env) => running.env_from = env,
            // As a kubelet's CreateContainerConfigError: the fetch step is not started.
            Err(e) => {
                running.stage = Stage::FetchFailed {
                    exit_code: 1,
                    message: format!("envFrom: {e}"),
                    retry_at: Instant::now() + Duration::from_secs(3600),
                }
            }
        }
        if let Err(e) = self.prepare_volumes(&running).await {
            tracing::warn!(pod = %running.name, error = %e, "cannot prepare volumes");
            running.stage = Stage::FetchFailed {
                exit_code: 1,
                message: format!("volumes: {e}"),
                retry_at: Instant::now() + Duration::from_secs(10),
            };
        }
        self.pods.insert(uid, running);
    }

    fn stop(&mut self, uid: &str) {
        if let Some(mut p) = self.pods.remove(uid) {
            match &mut p.stage {
                Stage::Fetching(child) | Stage::Serving { child, .. } => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Stage::FetchFailed { .. } => {}
            }
            let _ = std::fs::remove_dir_all(&p.dir);
        }
    }

    /// Advances every pod's processes and reports their status.
    async fn sync(&mut self) {
        let worker_bin = self.worker_bin.clone();
        for p in self.pods.values_mut() {
            advance(p, &worker_bin).await;
            let summary = summary(p);
            if summary == p.reported {
                continue;
            }
            match report(&self.client, p).await {
                Ok(()) => p.reported = summary,
                Err(e) => tracing::warn!(pod = %p.name, error = %e, "pod status"),
            }
        }
    }

    /// The variables each container's `envFrom` Secrets give: every key whose name is a
    /// valid variable name (the kubelet skips the others), a missing Secret an error.
    async fn env_from(&self, pod: &Pod, namespace: &str) -> anyhow::Result<HashMap<String, Vec<(String, String)>>> {
        let spec = pod.spec.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut env = HashMap::new();
        for container in spec.init_containers.iter().flatten().chain(&spec.containers) {
            let mut vars = Vec::new();
            for source in container.env_from.iter().flatten() {
                let Some(secret) = &source.secret_ref else { continue };
                let data = secrets.get(&secret.name).await?.data.unwrap_or_default();
                for (key, value) in data {
                    let valid = !key.is_empty()
                        && !key.starts_with(|c: char| c.is_ascii_digit())
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if valid {
                        vars.push((key, String::from_utf8_lossy(&value.0).into_owned()));
                    }
                }
            }
            env.insert(container.name.clone(), vars);
        }
        Ok(env)
    }

    async fn prepare_volumes(&self, p: &RunningPod) -> anyhow::Result<()> {
        let spec = p.pod.spec.clone().unwrap_or_default();
        for volume in spec.volumes.unwrap_or_default() {
            let dir = p.dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&dir)?;
            if let Some(cm) = volume.config_map {
                let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &p.namespace);
                let data = maps.get(&cm.name).await?.data.unwrap_or_default();
                for (key, value) in data {
                    std::fs::write(dir.join(key), value)?;
                }
            } else if let Some(secret) = volume.secret {
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &p.namespace);
                let data =
                    secrets.get(secret.secret_name.as_deref().unwrap_or_default()).await?.data.unwrap_or_default();
                let items = secret.items.unwrap_or_default();
                for (key, value) in data {
                    let path = items.iter().find(|i| i.key == key).map_or(key.clone(), |i| i.path.clone());
                    std::fs::write(dir.join(path), value.0)?;
                }
            } else if volume.persistent_volume_claim.is_some() {
                anyhow::bail!("volume {}: PersistentVolumeClaims are not supported by the pod runner", volume.name);
            }
        }
        Ok(())
    }
}

/// Starts, restarts and watches the pod's processes.
async fn advance(p: &mut RunningPod, worker_bin: &Path) {
    let spec = p.pod.spec.clone().unwrap_or_default();
    let Some(fetch) = spec.init_containers.as_ref().and_then(|c| c.first()).cloned() else { return };
    let Some(worker) = spec.containers.first().cloned() else { return };
    match &mut p.stage {
        Stage::FetchFailed { retry_at, .. } if Instant::now() >= *retry_at => {
            p.fetch_restarts += 1;
            match start(p, &fetch, worker_bin) {
                Ok(child) => p.stage = Stage::Fetching(child),
                Err(e) => p.stage = failed(1, format!("cannot start fetch: {e}")),
            }
        }
        Stage::Fetching(child) => {
            if let Ok(Some(exit)) = child.try_wait() {
                if exit.success() {
                    match start(p, &worker, worker_bin) {
                        Ok(child) => p.stage = Stage::Serving { child, ready: false },
                        Err(e) => p.stage = failed(1, format!("cannot start worker: {e}")),
                    }
                } else {
                    let message = std::fs::read_to_string(p.dir.join("fetch.termination")).unwrap_or_default();
                    p.stage = failed(exit.code().unwrap_or(1), message);
                }
            }
        }
        Stage::Serving { child, ready } => {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                *ready = readyz(&p.ip).await;
                return;
            }
            // The worker exited: restart it, as restartPolicy Always does.
            p.worker_restarts += 1;
            p.stage = match start(p, &worker, worker_bin) {
                Ok(child) => Stage::Serving { child, ready: false },
                Err(e) => failed(1, format!("cannot restart worker: {e}")),
            };
        }
        Stage::FetchFailed { .. } => {}
    }
}

/// The parts of a pod's state its status shows.
fn summary(p: &RunningPod) -> String {
    let stage = match &p.stage {
        Stage::Fetching(_) => "fetching".to_owned(),
        Stage::FetchFailed { exit_code, message, .. } => format!("failed {exit_code} {message}"),
        Stage::Serving { ready, .. } => format!("serving {ready}"),
    };
    format!("{stage} {} {}", p.fetch_restarts, p.worker_restarts)
}

fn failed(exit_code: i32, message: String) -> Stage {
    Stage::FetchFailed { exit_code, message, retry_at: Instant::now() + Duration::from_secs(10) }
}

/// Starts one container as a process, its listen addresses on the pod's loopback address.
fn start(p: &RunningPod, container: &Container, worker_bin: &Path) -> std::io::Result<Child> {
    let name = container.name.clone();
    let mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), p.dir.join("volumes").join(&m.name)))
        .collect();
    let map_path = |value: &str| -> String {
        for (mount, dir) in &mounts {
            if let Some(rest) = value.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", dir.display());
            }
        }
        value.to_owned()
    };
    let mut args: Vec<String> = Vec::new();
    for arg in container.args.iter().flatten() {
        let mapped = match arg.split_once('=') {
            Some((flag @ ("--listen" | "--metrics-listen"), value)) => {
                let port = value.rsplit_once(':').map_or(value, |(_, port)| port);
                format!("{flag}={}:{port}", p.ip)
            }
            Some((flag, value)) if flag.starts_with("--") => format!("{flag}={}", map_path(value)),
            _ => arg.clone(),
        };
        args.push(mapped);
    }
    let termination = p.dir.join(format!("{name}.termination"));
    // Before a `--` (vLLM's arguments), so the worker reads it.
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(at, format!("--termination-log={}", termination.display()));
    let mut cmd = Command::new(worker_bin);
    cmd.args(&args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    // envFrom first: an explicit `env` entry of the same name wins, as in a kubelet.
    cmd.envs(p.env_from.get(&name).into_iter().flatten().map(|(k, v)| (k, v)));
    for env in container.env.iter().flatten() {
        let value = match (&env.value, &env.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) if from.field_ref.as_ref().is_some_and(|f| f.field_path == "metadata.name") => {
                p.name.clone()
            }
            _ => String::new(),
        };
        cmd.env(&env.name, value);
    }
    crate::process::spawn_supervised(cmd, &p.dir.join(format!("{name}.log")))
}

/// The worker's API port, as the operator renders it.
const API_PORT: u16 = 8000;

async fn readyz(ip: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect((ip, API_PORT)).await else { return false };
    if stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200"
}

/// Writes the pod's status as a kubelet would.
async fn report(client: &Client, p: &RunningPod) -> kube::Result<()> {
    let now = Timestamp::now().to_string();
    let cond = |type_: &str, ok: bool| json!({ "type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now });
    let (init_state, worker_state, ready, endpoint) = match &p.stage {
        Stage::Fetching(_) => (
            json!({ "running": { "startedAt": now } }),
            json!({ "waiting": { "reason": "PodInitializing" } }),
            false,
            None,
        ),
        Stage::FetchFailed { exit_code, message, .. } => (
            json!({ "terminated": { "exitCode": exit_code, "reason": "Error", "message": message } }),
            json!({ "waiting": { "reason": "PodInitializing" } }),
            false,
            None,
        ),
        Stage::Serving { ready, .. } => (
            json!({ "terminated": { "exitCode": 0, "reason": "Completed" } }),
            json!({ "running": { "startedAt": now } }),
            *ready,
            Some(format!("http://{}:{API_PORT}", p.ip)),
        ),
    };
    let serving = matches!(p.stage, Stage::Serving { .. });
    let image = |i: usize, init: bool| {
        let spec = p.pod.spec.clone().unwrap_or_default();
        let list = if init { spec.init_containers.unwrap_or_default() } else { spec.containers };
        list.get(i).and_then(|c| c.image.clone()).unwrap_or_default()
    };
    let status = json!({ "status": {
        "phase": if serving { "Running" } else { "Pending" },
        "hostIP": "127.0.0.1",
        "podIP": p.ip,
        "podIPs": [{ "ip": p.ip }],
        "conditions": [cond("PodScheduled", true), cond("Initialized", serving), cond("ContainersReady", ready), cond("Ready", ready)],
        "initContainerStatuses": [{ "name": "fetch", "image": image(0, true), "imageID": "", "ready": serving,
                                     "restartCount": p.fetch_restarts.max(0), "state": init_state }],
        "containerStatuses": [{ "name": "worker", "image": image(0, false), "imageID": "", "ready": ready,
                                 "restartCount": p.worker_restarts, "started": serving, "state": worker_state }],
    }});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
    pods.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(status)).await?;
    let annotation = json!({ "metadata": { "annotations": { ENDPOINT_ANNOTATION: endpoint } } });
    pods.patch(&p.name, &PatchParams::default(), &Patch::Merge(annotation)).await?;
    Ok(())
}
