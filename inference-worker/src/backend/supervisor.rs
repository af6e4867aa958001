//! Starts the upstream model server (vLLM) as a child process, waits for its health
//! endpoint, warms it up, and watches it: readiness follows its health, its load is folded
//! into the worker's metrics, and when it dies or stops answering it is restarted with
//! backoff — up to a limit, after which the worker exits non-zero so the kubelet restarts
//! the container and the operator sees the crash loop.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::process::{Child, Command};

use super::readiness::Readiness;
use super::upstream::Upstream;
use super::vllm_metrics;

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The model name the warm-up request asks for (`--served-model-name`).
    pub served_model: String,
    /// Program and arguments; `None` when the upstream runs on its own (`--upstream-url`).
    pub command: Option<Vec<String>>,
    pub health_path: String,
    pub metrics_path: Option<String>,
    pub startup_timeout: Duration,
    pub max_restarts: u32,
    /// Readiness is withdrawn while the upstream has more requests waiting than this, and
    /// given back below half of it, so the Service sends new work to other replicas.
    pub max_waiting: Option<f64>,
    pub check_interval: Duration,
}

/// The worker's metrics of the model server, shared with its registry: what the
/// supervisor updates besides readiness.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// 1 while the model server answers its health check.
    pub up: Gauge,
    pub restarts: Counter,
    /// Its load, as its own metrics report it.
    pub running: Gauge<f64, AtomicU64>,
    pub waiting: Gauge<f64, AtomicU64>,
    pub kv_cache_usage: Gauge<f64, AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("the model server failed {0} times in a row; giving up so the container restarts")]
    TooManyRestarts(u32),
    #[error("cannot start the model server {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// Runs until the model server failed more than `max_restarts` times in a row; readiness
/// follows the model server's health meanwhile.
pub async fn supervise(
    upstream: Arc<Upstream>,
    cfg: UpstreamConfig,
    readiness: &Readiness,
    metrics: &UpstreamMetrics,
) -> Result<(), SupervisorError> {
    let mut failures = 0u32;
    loop {
        let mut child = match &cfg.command {
            Some(cmd) => Some(ModelServer::spawn(cmd)?),
            None => None,
        };
        let healthy = wait_healthy(&upstream, &cfg, child.as_mut().map(|c| &mut c.child)).await
            && warm_up(&cfg.served_model, &upstream).await;
        if healthy {
            tracing::info!(upstream = %upstream.base, "model server is healthy and warmed up; ready");
            readiness.set(true);
            metrics.up.set(1);
            failures = 0;
            monitor(readiness, metrics, &upstream, &cfg, child.as_mut().map(|c| &mut c.child)).await;
        }
        readiness.set(false);
        metrics.up.set(0);
        if let Some(child) = child.as_mut() {
            child.stop().await;
        }
        failures += 1;
        if failures > cfg.max_restarts {
            return Err(SupervisorError::TooManyRestarts(failures));
        }
        metrics.restarts.inc();
        let backoff = Duration::from_secs(1u64 << failures.min(5));
        tracing::warn!(attempt = failures, backoff_s = backoff.as_secs(), "restarting the model server");
        tokio::time::sleep(backoff).await;
    }
}

/// The model server's process and its process group (vLLM's API server, engine core and
/// workers). The group is remembered at spawn: once the API server has exited and been
/// reaped, its pid is gone but its helpers (and their GPU memory) may still run.
struct ModelServer {
    child: Child,
    group: Option<Pid>,
}

impl ModelServer {
    fn spawn(cmd: &[String]) -> Result<Self, SupervisorError> {
        let child = spawn(cmd)?;
        // In its own group (process_group(0)), so the group's id is its pid.
        let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
        Ok(Self { child, group })
    }

    /// Stops every process of the group: SIGTERM, and SIGKILL after 10 s. Signalled
    /// in-process: the worker images hold no `kill` binary.
    async fn stop(&mut self) {
        if let Some(group) = self.group
            && killpg(group, Signal::SIGTERM).is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
            // The leader is gone (or ignored SIGTERM); helpers are not left behind.
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = self.child.kill().await;
        self.group = None;
    }
}

/// When the worker shuts down (SIGTERM), the supervising future is dropped mid-flight:
/// `kill_on_drop` alone would kill only the API server and orphan the rest of the group.
impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

fn spawn(cmd: &[String]) -> Result<Child, SupervisorError> {
    let program = cmd.first().cloned().unwrap_or_default();
    tracing::info!(command = %cmd.join(" "), "starting the model server");
    let mut command = Command::new(&program);
    command
        .args(&cmd[1..])
        .stdin(Stdio::null())
        // Its own process group, so a restart stops the engine's helper processes too.
        .process_group(0)
        .kill_on_drop(true);
    die_with_the_worker(&mut command);
    command.spawn().map_err(|source| SupervisorError::Spawn { program, source })
}

/// The model server is SIGKILLed by the kernel when the worker dies, however it dies
/// (SIGKILL, the OOM killer): `kill_on_drop` needs the worker alive to run, and on a host
/// (an edge box, the tests) an orphaned vLLM would keep its port and its GPU memory. The
/// signal fires when the forking *thread* ends; the supervisor spawns from the runtime's
/// worker threads, which live as long as the worker. Only the API server gets it: vLLM's
/// engine core and workers, its children, outlive a SIGKILLed worker on a host (in a pod
/// the container's PID namespace ends with the worker and takes them along).
#[allow(unsafe_code)]
fn die_with_the_worker(command: &mut Command) {
    // SAFETY: runs between fork and exec, where only async-signal-safe calls are allowed:
    // prctl is one, and the closure touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

async fn health(upstream: &Upstream, path: &str) -> bool {
    let request = upstream.client.get(format!("{}{path}", upstream.base)).timeout(Duration::from_secs(5));
    matches!(request.send().await, Ok(r) if r.status().is_success())
}

/// Polls the health endpoint until it answers, the child exits, or the startup timeout.
async fn wait_healthy(upstream: &Upstream, cfg: &UpstreamConfig, mut child: Option<&mut Child>) -> bool {
    let deadline = tokio::time::Instant::now() + cfg.startup_timeout;
    while tokio::time::Instant::now() < deadline {
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::error!(%status, "the model server exited while starting");
            return false;
        }
        if health(upstream, &cfg.health_path).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::error!(timeout_s = cfg.startup_timeout.as_secs(), "the model server did not become healthy in time");
    false
}

/// One tiny completion, so the first user request does not pay for lazy initialisation,
/// and readiness means the model really answers. An embedding model (vLLM's pooling
/// runner) has no /v1/completions (404): it is warmed up with one embedding instead.
async fn warm_up(served_model: &str, upstream: &Upstream) -> bool {
    let completion = serde_json::json!({ "model": served_model, "prompt": "Hello", "max_tokens": 1 });
    match warm_up_with(upstream, "/v1/completions", &completion).await {
        Some(status) if status.is_success() => true,
        Some(reqwest::StatusCode::NOT_FOUND) => {
            let embedding = serde_json::json!({ "model": served_model, "input": "Hello" });
            warm_up_with(upstream, "/v1/embeddings", &embedding).await.is_some_and(|s| s.is_success())
        }
        _ => false,
    }
}

/// The warm-up request's status (logged unless a success), `None` when it got no answer.
async fn warm_up_with(upstream: &Upstream, path: &str, body: &serde_json::Value) -> Option<reqwest::StatusCode> {
    let request = upstream.client.post(format!("{}{path}", upstream.base)).json(body).timeout(Duration::from_secs(300));
    match request.send().await {
        Ok(r) => {
            if !r.status().is_success() {
                tracing::error!(status = %r.status(), path, "the model server refused the warm-up request");
            }
            Some(r.status())
        }
        Err(e) => {
            tracing::error!(error = %e, path, "the warm-up request failed");
            None
        }
    }
}

async fn monitor(
    readiness: &Readiness,
    metrics: &UpstreamMetrics,
    upstream: &Upstream,
    cfg: &UpstreamConfig,
    mut child: Option<&mut Child>,
) {
    let mut misses = 0;
    let mut ticker = tokio::time::interval(cfg.check_interval);
    loop {
        let exited = async {
            match child.as_deref_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => {
                tracing::error!(status = ?status, "the model server exited");
                return;
            }
            _ = ticker.tick() => {}
        }
        if health(upstream, &cfg.health_path).await {
            misses = 0;
        } else {
            misses += 1;
            tracing::warn!(misses, "the model server failed a health check");
            if misses >= 3 {
                tracing::error!("the model server stopped answering its health checks");
                return;
            }
            continue;
        }
        if let Some(path) = &cfg.metrics_path {
            fold_load(readiness, metrics, upstream, path, cfg.max_waiting).await;
        }
    }
}

/// Copies the model server's load into the worker's metrics, and withdraws readiness while
/// more requests wait than `max_waiting` (given back below half of it).
async fn fold_load(
    readiness: &Readiness,
    metrics: &UpstreamMetrics,
    upstream: &Upstream,
    path: &str,
    max_waiting: Option<f64>,
) {
    let request = upstream.client.get(format!("{}{path}", upstream.base)).timeout(Duration::from_secs(5));
    let Ok(response) = request.send().await else { return };
    let Ok(text) = response.text().await else { return };
    let load = vllm_metrics::parse(&text);
    metrics.running.set(load.running);
    metrics.waiting.set(load.waiting);
    if let Some(kv) = load.kv_cache_usage {
        metrics.kv_cache_usage.set(kv);
    }
    if let Some(limit) = max_waiting {
        if readiness.is_ready() && load.waiting > limit {
            tracing::warn!(waiting = load.waiting, limit, "model server saturated: withdrawing readiness");
            readiness.set(false);
        } else if !readiness.is_ready() && load.waiting <= limit / 2.0 {
            readiness.set(true);
        }
    }
}
